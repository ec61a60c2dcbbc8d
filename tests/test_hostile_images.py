"""Hostile files and paths at ingest's image boundary: each is a reject, never a crash or a hang.

Unit tests of `bionas.safe_paths` / `ingest.images.read_image`, then one real
`bionas ingest` (in a subprocess with a timeout, so a hang fails instead of blocking the
suite) over a small synthetic dataset with hostile files and cells planted.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from ingest_helpers import encoded, png_declaring, read_samples, run_cli
from PIL import Image

from bionas.ingest.images import IMAGE_REASONS, ImageReject, ImageSpec, read_image
from bionas.ingest.profiles import BIOSCAN_5M, INSECTS_1M
from bionas.ingest.scan import PATH, path_expression, path_parts
from bionas.safe_paths import FileTooLarge, UnsafePath, read_regular_file, real_root

JPEG = encoded(Image.new("RGB", (64, 48), (10, 200, 10)))


@contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) when the block takes longer than `seconds`."""

    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def tree(tmp_path):
    """images/ (the root) holding ok.jpg, and outside.jpg beside it."""
    root = tmp_path / "images"
    (root / "train" / "1").mkdir(parents=True)
    (root / "train" / "1" / "ok.jpg").write_bytes(JPEG)
    (tmp_path / "outside.jpg").write_bytes(JPEG)
    return root


def _reason(root: Path, relative: str, spec: ImageSpec = ImageSpec()) -> str:
    with pytest.raises(ImageReject) as info, deadline(5):
        read_image(real_root(root), relative, spec)
    return info.value.reason


def test_a_regular_file_inside_the_root_is_read(tree):
    assert read_image(real_root(tree), "train/1/ok.jpg", ImageSpec()) == JPEG


@pytest.mark.parametrize(
    "relative", ["../outside.jpg", "train/../../outside.jpg", "train/1/../../../outside.jpg"]
)
def test_dot_dot_leaving_the_root_is_unsafe(tree, relative):
    assert _reason(tree, relative) == "unsafe_path"


def test_dot_dot_staying_inside_the_root_is_fine(tree):
    assert read_image(real_root(tree), "train/../train/1/ok.jpg", ImageSpec()) == JPEG


def test_absolute_paths_and_nul_bytes_are_unsafe(tree):
    assert _reason(tree, str(tree.parent / "outside.jpg")) == "unsafe_path"
    assert _reason(tree, "train/1/ok.jpg\0.png") == "unsafe_path"


def test_a_symlink_leading_outside_is_unsafe_and_one_inside_is_followed(tree):
    (tree / "train" / "out.jpg").symlink_to(tree.parent / "outside.jpg")
    (tree / "train" / "in.jpg").symlink_to(tree / "train" / "1" / "ok.jpg")
    (tree / "linked").symlink_to(tree.parent)  # a folder link out of the root
    assert _reason(tree, "train/out.jpg") == "unsafe_path"
    assert _reason(tree, "linked/outside.jpg") == "unsafe_path"
    assert read_image(real_root(tree), "train/in.jpg", ImageSpec()) == JPEG


def test_a_root_given_through_a_symlink_still_holds_its_files(tree):
    (tree.parent / "alias").symlink_to(tree)
    assert read_image(real_root(tree.parent / "alias"), "train/1/ok.jpg", ImageSpec()) == JPEG


def test_a_fifo_is_unsafe_and_never_opened(tree, monkeypatch):
    os.mkfifo(tree / "train" / "fifo.jpg")  # no writer: opening it to read would block
    opened = []
    monkeypatch.setattr(os, "open", lambda *args, **kwargs: opened.append(args))
    assert _reason(tree, "train/fifo.jpg") == "unsafe_path"
    assert opened == []


def test_directories_and_devices_are_unsafe(tree):
    (tree / "train" / "dir.jpg").mkdir()
    assert _reason(tree, "train/dir.jpg") == "unsafe_path"
    assert _reason(tree, "") == "unsafe_path"  # the root itself
    with pytest.raises(UnsafePath, match="character device"), deadline(5):
        read_regular_file("/dev/zero", 1 << 20)  # endless: a read would fill the memory


def test_a_missing_file_is_still_a_missing_file(tree):
    with pytest.raises(FileNotFoundError):
        read_image(real_root(tree), "train/1/gone.jpg", ImageSpec())


def test_a_file_above_the_byte_limit_is_too_large_and_not_read(tree, monkeypatch):
    big = tree / "train" / "big.jpg"
    with big.open("wb") as f:
        f.truncate(64 * 2**20 + 1)  # sparse: no disk used
    reads = []
    monkeypatch.setattr(os, "read", lambda *args: reads.append(args))
    assert _reason(tree, "train/big.jpg") == "too_large"
    assert reads == []
    monkeypatch.undo()
    assert _reason(tree, "train/1/ok.jpg", ImageSpec(max_file_bytes=len(JPEG) - 1)) == "too_large"


HOSTILE_CELLS = {
    "bioscan split ..": (BIOSCAN_5M, {"split": "..", "chunk": "", "processid": "outside"}),
    "bioscan chunk ../../x": (BIOSCAN_5M, {"split": "a", "chunk": "../../x", "processid": "y"}),
    "bioscan split ///abs": (BIOSCAN_5M, {"split": "///abs", "chunk": "", "processid": "y"}),
    "insects file_name ..": (INSECTS_1M, {"file_name": "../outside.jpg"}),
    "insects file_name ///abs": (INSECTS_1M, {"file_name": "///abs/outside.jpg"}),
    "insects file_name a/../..": (INSECTS_1M, {"file_name": "a/../../outside.jpg"}),
}


@pytest.mark.parametrize(("profile", "cells"), HOSTILE_CELLS.values(), ids=HOSTILE_CELLS.keys())
def test_paths_built_from_hostile_cells_are_unsafe(tree, profile, cells):
    names = dict(zip(profile.path_columns(), path_parts(profile), strict=True))
    row = pl.DataFrame({names[raw]: [value] for raw, value in cells.items()})
    relative = row.select(path_expression(profile.image_path, path_parts(profile)))[PATH][0]
    assert _reason(tree, relative) == "unsafe_path", relative


def test_every_image_reject_reason_is_documented_in_the_readme():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### `bionas ingest`") :]
    for reason in IMAGE_REASONS:
        assert f"`{reason}`" in section, reason


# --- the real CLI over a dataset with hostile files planted ---------------------------

PLANTED = {  # kind -> expected reject reason
    "decompression_bomb_png": "too_large",
    "huge_file": "too_large",
    "eps": "not_an_image",
    "gif": "not_an_image",
    "bmp_20_bytes": "not_an_image",
    "webp_30_bytes": "not_an_image",
    "wide_2000x1": "extreme_aspect",
    "tiny_1x1": "too_small",
    "split_dot_dot": "unsafe_path",
    "chunk_up_and_over": "unsafe_path",
    "split_absolute": "unsafe_path",
    "symlink_outside": "unsafe_path",
    "fifo": "unsafe_path",
    "directory": "unsafe_path",
}
ACCEPTED = ("png_16_bit", "png_palette", "png_rgba", "symlink_inside")


def _plant_file(kind: str, path: Path, outside: Path) -> None:
    path.unlink()
    gradient = np.tile(np.linspace(0, 65535, 256), (192, 1)).astype(np.uint16)
    photo = Image.new("RGB", (256, 192), (200, 40, 40))
    contents = {
        "decompression_bomb_png": lambda: png_declaring(100_000, 100_000),
        "eps": lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n",
        "gif": lambda: encoded(photo, "GIF"),
        "bmp_20_bytes": lambda: encoded(photo, "BMP")[:20],
        "webp_30_bytes": lambda: encoded(photo, "WEBP")[:30],
        "wide_2000x1": lambda: encoded(Image.new("RGB", (2000, 1))),
        "tiny_1x1": lambda: encoded(Image.new("RGB", (1, 1))),
        "png_16_bit": lambda: encoded(Image.fromarray(gradient), "PNG"),
        "png_palette": lambda: encoded(photo.quantize(colors=8), "PNG"),
        "png_rgba": lambda: encoded(photo.convert("RGBA"), "PNG"),
    }
    if kind in contents:
        path.write_bytes(contents[kind]())
    elif kind == "huge_file":
        with path.open("wb") as f:
            f.truncate(64 * 2**20 + 1)  # sparse
    elif kind in ("symlink_outside", "symlink_inside"):
        target = outside if kind == "symlink_outside" else path.with_name("target.jpg.real")
        target.write_bytes(encoded(photo))
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()


CELLS = {
    "split_dot_dot": {"split": "..", "chunk": ""},  # -> images/<pid>.jpg
    "chunk_up_and_over": {"chunk": "../../etc"},  # -> images/etc/<pid>.jpg
    "split_absolute": {"split": "///{outside}", "chunk": ""},  # -> /.../outside/<pid>.jpg
}


def _plant_cells(kind: str, row: dict, root: Path, outside: Path) -> dict:
    """New split/chunk cells for `row`, and a readable JPEG where they lead (out of root)."""
    cells = {k: v.format(outside=outside.parent) for k, v in CELLS[kind].items()}
    parts = path_parts(BIOSCAN_5M)
    merged = {**row, **cells}
    raw = dict(zip(parts, BIOSCAN_5M.path_columns(), strict=True))
    frame = pl.DataFrame({part: [merged[raw[part]]] for part in parts})
    relative = frame.select(path_expression(BIOSCAN_5M.image_path, parts))
    target = Path(os.path.normpath(root / relative[PATH][0]))
    assert not target.is_relative_to(root), target
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(encoded(Image.new("RGB", (256, 192), (40, 40, 200))))
    return cells


def _set_cells(meta: pl.DataFrame, pid: str, cells: dict) -> pl.DataFrame:
    here = pl.col("processid") == pid
    return meta.with_columns(
        pl.when(here).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
        for column, value in cells.items()
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A 60-row synthetic dataset with one hostile file or cell per planted kind."""
    synth = tmp_path_factory.mktemp("hostile") / "synth"
    run_cli("synth", synth, "--n", 60, "--seed", 5, "--workers", 1)
    root = synth / "images" / "original_full"
    outside = synth.parent / "outside" / "secret.jpg"
    outside.parent.mkdir()
    meta = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    labelled = meta.filter(pl.col("order").fill_null("") != "")
    kinds = [*PLANTED, *ACCEPTED]
    planted = {}
    for kind, row in zip(kinds, labelled.head(len(kinds)).to_dicts(), strict=True):
        pid = planted[kind] = row["processid"]
        if kind in CELLS:
            meta = _set_cells(meta, pid, _plant_cells(kind, row, root, outside))
        else:
            chunk = row["chunk"] or ""
            _plant_file(kind, root / row["split"] / chunk / f"{pid}.jpg", outside)
    meta.write_csv(synth / "metadata.csv")
    bbox = pl.read_csv(synth / "bbox.tsv", separator="\t", infer_schema=False)
    keep = ~pl.col("processid").is_in(list(planted.values()))  # planted: the whole image
    bbox.filter(keep).write_csv(synth / "bbox.tsv", separator="\t")
    return synth, planted


@pytest.fixture(scope="module")
def ingested(hostile, tmp_path_factory):
    """`bionas ingest` of `hostile` in its own process group, killed whole after 120 s."""
    synth, _ = hostile
    out = tmp_path_factory.mktemp("hostile-ds") / "ds"
    command = [
        sys.executable, "-m", "bionas", "ingest", str(synth / "metadata.csv"),
        "--images", str(synth / "images" / "original_full"), "--bbox", str(synth / "bbox.tsv"),
        "--out", str(out), "--min-class-count", "1", "--size", "32", "--shard-size", "16",
        "--workers", "2", "--quiet",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail("bionas ingest hung on a hostile file (killed after 120 s)")
    assert process.returncode == 0, output.decode()
    return out


def test_ingest_rejects_every_planted_file_with_its_reason_and_keeps_every_good_row(
    hostile, ingested
):
    synth, planted = hostile
    rejects = pl.read_parquet(ingested / "rejects.parquet")
    reason_of = dict(zip(rejects["processid"], rejects["reason"], strict=True))
    for kind, reason in PLANTED.items():
        assert reason_of.get(planted[kind]) == reason, (kind, reason_of.get(planted[kind]))
    samples = read_samples(ingested)  # plain tarfile reads of every shard
    metadata = pl.read_csv(synth / "metadata.csv", infer_schema=False)
    assert set(samples) == set(metadata["processid"]) - set(reason_of)
    assert not set(samples) & {planted[kind] for kind in PLANTED}
    assert {planted[kind] for kind in ACCEPTED} <= set(samples)
    manifest = json.loads((ingested / "manifest.json").read_text())
    assert manifest["rejects"]["total"] == rejects.height


def test_planted_png_modes_land_with_their_tones(hostile, ingested):
    _, planted = hostile
    samples = read_samples(ingested)

    def mean(kind: str) -> np.ndarray:
        jpg = samples[planted[kind]]["jpg"]
        return np.asarray(Image.open(io.BytesIO(jpg)), dtype=float).reshape(-1, 3).mean(0)

    assert abs(mean("png_16_bit") - 127.5).max() < 6  # a 0..65535 gradient: not white
    for kind in ("png_palette", "png_rgba", "symlink_inside"):
        assert abs(mean(kind) - (200, 40, 40)).max() < 12, kind


def test_rejects_survive_the_trip_from_a_worker_process():
    for error in (ImageReject("too_small", "1x1"), FileTooLarge("/x.jpg", 10, 5), UnsafePath("..")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
