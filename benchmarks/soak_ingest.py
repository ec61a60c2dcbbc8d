"""Soak test of `bionas ingest` resume: hostile inputs of every kind, killed and resumed.

One synthetic BIOSCAN-5M dataset (>= 100,000 metadata rows by default) with >= 1% of the
rows planted as each kind of hostile input (KINDS below: ragged rows, unsafe processids,
duplicates, empty targets, bad boxes; missing, truncated, garbage, non-photo, bomb, huge,
too small, extreme-aspect, symlinked, FIFO, directory and `..`/absolute-path images; and
16-bit, palette, alpha PNGs and grayscale/CMYK/EXIF JPEGs, which must be accepted) is
ingested twice with the same command:

  a. clean   one uninterrupted `bionas ingest` into clean/
  b. soak    the same command into soak-ds/, SIGKILLed (the whole process group: parent,
             spawn workers, resource tracker) at seeded random moments — one during the
             plan, the middle ones at a random share of the shards (by shard count plus a
             random delay, or by seconds since start), one as soon as a shard's temporary
             file is seen (a shard being written), the last when every shard is on disk
             (state records, rejects, vocabularies, manifest still to write) — and rerun
             until a run completes

then the two folders are compared file by file (sha256 of every shard, manifest.json,
rejects.parquet, vocabularies, .state records), every row is accounted for (table rows =
shard samples + rejects + rows outside --splits; good rows lost must be 0) and every
planted row is checked for its expected reject reason (or acceptance). Exits 1 when
anything differs.

Images: synthesizing 100,000 1024x768 photos would take ~10 min and 13 GB here, so a pool
of `--pool` synthesized photos (`bionas synth --n POOL`) is hard-linked under every good
row's processid (ingest still reads and decodes each row's file); hostile files are
written per kind (8 distinct files per kind, hard-linked) and FIFOs, directories and
symlinks are made per row. Metadata and bboxes come from `bionas synth --no-images
--corrupt K` (which plants the duplicate, empty-target and bad-geometry rows); the other
kinds are planted here. Everything is written under --work (default benchmarks/out/soak/;
the synth tables and the pool are reused by later runs, the planted folder is rebuilt).

    python benchmarks/soak_ingest.py --quick        # 5,000 specimens, 5 kills (~30 s)
    python benchmarks/soak_ingest.py                # 100,000 specimens, 6 kills
    python benchmarks/soak_ingest.py --results benchmarks/results/<machine>/soak_ingest.txt
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import psutil
from _common_data import BIONAS, synth_once
from PIL import Image
from reporting import OUT_DIR, format_table, machine, machine_line, uptime_line, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from ingest_helpers import encoded, jpeg_declaring, png_declaring  # noqa: E402

import bionas  # noqa: E402
from bionas.ingest.profiles import BIOSCAN_5M  # noqa: E402
from bionas.ingest.scan import PATH, path_expression, path_parts  # noqa: E402

ACCEPT = "accepted"
NOT_PLANTED = (
    "Not planted: `unreadable_file` (needs EACCES or EIO; this runs as root, which reads "
    "any mode) and `missing_split` (unreachable under --split-source random, the default: "
    "the split cell only builds the path). Each file kind is 8 distinct files hard-linked "
    "under its rows; FIFOs, directories and symlinks are made per row."
)
SHARE = 0.0105  # rows planted per kind, as a share of the specimens: >= 1% of all rows
DISTINCT = 8  # distinct files per file kind (hard-linked under the kind's rows)
SHARD_NAME = re.compile(r"^[a-z_]+-\d{6}\.tar$")
STATE_NAME = re.compile(r"^[a-z_]+-\d{6}\.tar\.json$")
POLL_S = 0.02


@dataclass(frozen=True)
class Kind:
    name: str
    stage: str  # plan | image
    expect: str  # the reject reason, or ACCEPT
    how: str


KINDS = (
    Kind("ragged_extra_field", "plan", "ragged_row", "an unquoted extra field (24 of 23)"),
    Kind("ragged_missing_field", "plan", "ragged_row", "the last field cut off (22 of 23)"),
    Kind("unsafe_processid", "plan", "unsafe_processid", "../P, P/x, P.jpg, P\u00fc, P+90 chars"),
    Kind("duplicate_processid", "plan", "duplicate_processid", "synth --corrupt: row copied"),
    Kind("empty_target", "plan", "empty_target", "synth --corrupt: order emptied"),
    Kind("bad_bbox_geometry", "plan", "bad_bbox", "synth --corrupt: x1<=x0, zero area, outside"),
    Kind("bad_bbox_unreadable", "plan", "bad_bbox", "coords n/a x4, empty x4, text x4, one n/a"),
    Kind("bad_bbox_ragged_row", "plan", "bad_bbox", "bbox row with a stray tab / a lost field"),
    Kind("missing_file", "image", "missing_file", "no file at the path"),
    Kind("truncated_jpeg", "image", "corrupt_image", "pool JPEG cut at 600 B, 30/60/90%"),
    # Pillow reads the APP0 length from the random bytes: past the end is a decode error
    # (corrupt_image); a jump to a non-marker byte makes it "not a JPEG" (not_an_image)
    Kind(
        "jpeg_header_garbage",
        "image",
        "corrupt_image|not_an_image",
        "JPEG SOI+APP0, then random bytes",
    ),  # fmt: skip
    Kind("garbage_bytes", "image", "not_an_image", "random bytes behind .jpg"),
    Kind("non_photo_format", "image", "not_an_image", "GIF, BMP, TIFF, WebP, EPS behind .jpg"),
    Kind("decompression_bomb", "image", "too_large", "PNG 100000^2 / JPEG 30000^2 header"),
    Kind("huge_file", "image", "too_large", "sparse 64 MiB + 1 byte"),
    Kind("too_small_image", "image", "too_small", "8x8 / 12x40 JPEG, no bbox row"),
    Kind("too_small_bbox", "image", "too_small", "pool photo, bbox 6x6 .. 10x12 px"),
    Kind("extreme_aspect_image", "image", "extreme_aspect", "2000x1 / 1000x30 JPEG, no bbox"),
    Kind("extreme_aspect_bbox", "image", "extreme_aspect", "pool photo, bbox 900x20 px"),
    Kind("symlink_outside", "image", "unsafe_path", "symlink to a JPEG outside --images"),
    Kind("fifo", "image", "unsafe_path", "a FIFO (no writer) at the path"),
    Kind("directory", "image", "unsafe_path", "a directory at the path"),
    Kind("split_dot_dot", "image", "unsafe_path", "split '..', chunk '' (a JPEG there)"),
    Kind("chunk_dot_dot", "image", "unsafe_path", "chunk '../../etc' (a JPEG there)"),
    Kind("split_absolute", "image", "unsafe_path", "split '///<outside>' (a JPEG there)"),
    Kind("png_16_bit", "image", ACCEPT, "16-bit grayscale PNG behind .jpg"),
    Kind("png_palette", "image", ACCEPT, "palette PNG (64 colours) behind .jpg"),
    Kind("png_alpha", "image", ACCEPT, "RGBA / LA PNG behind .jpg"),
    Kind("png_rgb", "image", ACCEPT, "plain RGB PNG behind .jpg"),
    Kind("grayscale_jpeg", "image", ACCEPT, "8-bit grayscale JPEG"),
    Kind("cmyk_jpeg", "image", ACCEPT, "CMYK JPEG"),
    Kind("exif_rotated_jpeg", "image", ACCEPT, "stored 90 deg off, EXIF orientation 6"),
    Kind("symlink_inside", "image", ACCEPT, "symlink to a JPEG inside --images"),
)
# rows bionas synth made without a planted kind: good ones, and its natural empty orders
UNPLANTED = (
    Kind("good", "-", ACCEPT, "synth row, a pool photo"),
    Kind("natural_empty_order", "plan", "empty_target", "synth: order empty by nature"),
)
BY_NAME = {k.name: k for k in (*UNPLANTED, *KINDS)}
SYNTH_KINDS = {  # kind -> corruptions.json key (planted by bionas synth --corrupt)
    "duplicate_processid": "duplicate_processid",
    "empty_target": "empty_target",
    "bad_bbox_geometry": "bad_bbox",
}
PNG_KINDS = ("png_16_bit", "png_palette", "png_alpha", "png_rgb")
BBOX_KINDS = ("bad_bbox_unreadable", "bad_bbox_ragged_row", "too_small_bbox",
              "extreme_aspect_bbox", "too_small_image", "extreme_aspect_image")  # fmt: skip
OUTWARD_KINDS = ("split_dot_dot", "chunk_dot_dot", "split_absolute")


# --- the dataset ---------------------------------------------------------------------


@dataclass
class Dataset:
    folder: Path
    rows: int  # metadata data rows
    expect: list[tuple[str, str, str]]  # per row: (kind, processid, reason or ACCEPT)
    kinds: dict[str, int]  # kind -> rows planted
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def metadata(self) -> Path:
        return self.folder / "metadata.csv"

    @property
    def bbox(self) -> Path:
        return self.folder / "bbox.tsv"

    @property
    def images(self) -> Path:
        return self.folder / "images" / "original_full"


def build_dataset(work: Path, n: int, seed: int, pool_size: int) -> Dataset:
    """Synth tables (+ synth's own corruptions), a photo pool, then every kind planted."""
    per_kind = math.ceil(n * SHARE)
    start = time.perf_counter()
    base, pool = work / f"base-n{n}-s{seed}-c{per_kind}", work / f"pool-{pool_size}"
    reused = all((folder / "metadata.csv").exists() for folder in (base, pool))
    synth_once(base, n, "--seed", seed, "--corrupt", per_kind, "--no-images")
    synth_once(pool, pool_size, "--seed", 1000 + seed)
    synth_s = -1.0 if reused else time.perf_counter() - start
    start = time.perf_counter()
    folder = work / f"data-n{n}-s{seed}"
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images" / "original_full").mkdir(parents=True)
    corruptions = json.loads((base / "corruptions.json").read_text())
    meta = pl.read_csv(base / "metadata.csv", infer_schema=False)
    rng = np.random.default_rng([seed, 11])
    chosen = choose_rows(meta, corruptions, per_kind, rng)
    meta = plant_cells(meta, chosen, folder)
    write_metadata(meta, chosen, folder / "metadata.csv")
    write_bbox(base / "bbox.tsv", meta, chosen, folder / "bbox.tsv", rng)
    data = Dataset(folder, meta.height, [], {})
    data.expect = expectations(meta, chosen, corruptions, n)
    data.kinds = {name: len(rows) for name, rows in chosen.items()}
    write_files(data, meta, chosen, pool_photos(pool), rng)
    data.seconds = {"synth": synth_s, "plant": time.perf_counter() - start}
    return data


def pool_photos(pool: Path) -> list[Path]:
    """The pool's plain RGB JPEGs (synth's accepted variants left out), sorted."""
    body = json.loads((pool / "corruptions.json").read_text())
    special = {pid for group in body["accepted_variants"].values() for pid in group}
    photos = sorted((pool / "images" / "original_full").rglob("*.jpg"))
    return [p for p in photos if p.stem not in special]


def choose_rows(
    meta: pl.DataFrame, corruptions: dict, per_kind: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Row positions per kind: synth's own plantings, and distinct fresh rows for ours."""
    pids = meta["processid"]
    chosen: dict[str, np.ndarray] = {}
    for kind, key in SYNTH_KINDS.items():
        ids = set(corruptions["corruptions"][key])
        rows = np.flatnonzero(pids.is_in(list(ids)).to_numpy())
        if kind == "duplicate_processid":  # the copies, appended after the first occurrences
            rows = rows[~pids.is_first_distinct().to_numpy()[rows]]
        chosen[kind] = rows
    taken = set(corruptions["natural_empty_order"])
    taken |= {pid for group in corruptions["corruptions"].values() for pid in group}
    taken |= {pid for group in corruptions["accepted_variants"].values() for pid in group}
    labelled = meta["order"].fill_null("") != ""
    free = np.flatnonzero((labelled & ~pids.is_in(list(taken)) & ~pids.is_duplicated()).to_numpy())
    free = rng.permutation(free)
    ours = [k.name for k in KINDS if k.name not in SYNTH_KINDS]
    if len(free) < per_kind * len(ours):
        raise SystemExit(f"--n too small: {len(ours)} kinds x {per_kind} rows > {len(free)} free")
    for i, kind in enumerate(ours):
        chosen[kind] = np.sort(free[i * per_kind : (i + 1) * per_kind])
    return chosen


def plant_cells(meta: pl.DataFrame, chosen: dict[str, np.ndarray], folder: Path) -> pl.DataFrame:
    """Unsafe processids and hostile split/chunk cells."""
    pid, split, chunk = (meta[c].to_list() for c in ("processid", "split", "chunk"))
    outside = folder / "outside"
    flavours = ("../{}", "{}/x", "{}.jpg", "{}\u00fc", "{}" + "X" * 90)
    for i, row in enumerate(chosen["unsafe_processid"].tolist()):
        pid[row] = flavours[i % len(flavours)].format(pid[row])
    for row in chosen["split_dot_dot"].tolist():
        split[row], chunk[row] = "..", ""
    for row in chosen["chunk_dot_dot"].tolist():
        chunk[row] = "../../etc"
    for row in chosen["split_absolute"].tolist():
        split[row], chunk[row] = f"///{outside}", ""
    return meta.with_columns(
        pl.Series("processid", pid), pl.Series("split", split), pl.Series("chunk", chunk)
    )


def write_metadata(meta: pl.DataFrame, chosen: dict[str, np.ndarray], path: Path) -> None:
    """The CSV, then ragged rows made by editing their lines (Polars would not write them)."""
    lines = meta.write_csv().splitlines(keepends=True)
    assert len(lines) == meta.height + 1, "a quoted cell spans lines: line edits would miss"
    assert meta.columns[-1] == "chunk" and meta.columns[0] == "processid"
    for row in chosen["ragged_extra_field"].tolist():
        lines[row + 1] = lines[row + 1].rstrip("\n") + ",extra\n"
    for row in chosen["ragged_missing_field"].tolist():
        line = lines[row + 1].rstrip("\n")
        lines[row + 1] = line[: line.rindex(",")] + "\n"
    path.write_text("".join(lines))


def write_bbox(
    source: Path,
    meta: pl.DataFrame,
    chosen: dict[str, np.ndarray],
    path: Path,
    rng: np.random.Generator,
) -> None:
    """bbox.tsv with unreadable, ragged, tiny and thin boxes; no row for whole-photo kinds."""
    lines = source.read_text().splitlines()
    where = {line.split("\t", 1)[0]: i for i, line in enumerate(lines)}
    pids = meta["processid"]
    unreadable = (["n/a"] * 4, [""] * 4, ["left", "top", "right", "bottom"], ["n/a"])
    for kind in BBOX_KINDS:
        for i, row in enumerate(chosen[kind].tolist()):
            at = where[pids[row]]
            cells = lines[at].split("\t")
            if kind == "bad_bbox_unreadable":
                flavour = unreadable[i % len(unreadable)]
                cells[3 : 3 + len(flavour)] = flavour
            elif kind == "bad_bbox_ragged_row":
                cells = cells[:3] + [""] + cells[3:] if i % 2 else cells[:-1]
            elif kind == "too_small_bbox":
                x, y = int(rng.integers(100, 800)), int(rng.integers(100, 600))
                cells[3:7] = map(str, (x, y, x + 6 + i % 5, y + 6 + i % 7))
            elif kind == "extreme_aspect_bbox":
                y = int(rng.integers(50, 700))
                cells[3:7] = map(str, (50, y, 950, y + 20))
            else:  # too_small_image, extreme_aspect_image: the whole (tiny or thin) photo
                cells = []
            lines[at] = "\t".join(cells)
    path.write_text("\n".join(line for line in lines if line) + "\n")


def expectations(
    meta: pl.DataFrame, chosen: dict[str, np.ndarray], corruptions: dict, n: int
) -> list[tuple[str, str, str]]:
    """Per metadata row: (kind, processid, expected reject reason or ACCEPT)."""
    kind_of = ["good"] * meta.height
    for kind, rows in chosen.items():
        for row in rows.tolist():
            kind_of[row] = kind
    natural = set(corruptions["natural_empty_order"])
    expect = []
    for row, pid in enumerate(meta["processid"].to_list()):
        kind = kind_of[row]
        if kind == "good" and pid in natural:
            expect.append(("natural_empty_order", pid, "empty_target"))
        else:
            expect.append((kind, pid, BY_NAME[kind].expect))
    return expect


def relative_paths(meta: pl.DataFrame) -> list[str]:
    """Each row's image path under --images, as ingest computes it."""
    parts = path_parts(BIOSCAN_5M)
    raw = dict(zip(parts, BIOSCAN_5M.path_columns(), strict=True))
    frame = meta.select(pl.col(raw[p]).alias(p) for p in parts)
    return frame.select(path_expression(BIOSCAN_5M.image_path, parts))[PATH].to_list()


def write_files(
    data: Dataset,
    meta: pl.DataFrame,
    chosen: dict[str, np.ndarray],
    photos: list[Path],
    rng: np.random.Generator,
) -> None:
    """A file (or FIFO, directory, symlink, nothing) at every row's image path."""
    kind_of = {row: kind for kind, rows in chosen.items() for row in rows.tolist()}
    sources = kind_sources(data.folder / "files", photos, rng)
    outside = data.folder / "outside" / "secret.jpg"
    outside.parent.mkdir(parents=True, exist_ok=True)
    os.link(photos[0], outside)
    inside = data.images / "_targets"
    inside.mkdir()
    done: set[Path] = set()
    for row, relative in enumerate(relative_paths(meta)):
        kind = kind_of.get(row, "good")
        path = Path(os.path.normpath(data.images / relative))
        # hostile cells lead out of --images, to a readable photo (if followed, it would land)
        assert path.is_relative_to(data.images) != (kind in OUTWARD_KINDS), (kind, path)
        if kind in ("unsafe_processid", "missing_file") or path in done:
            continue
        done.add(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        photo = photos[row % len(photos)]
        if kind == "symlink_outside":
            path.symlink_to(outside)
        elif kind == "symlink_inside":
            target = inside / f"{row}.jpg"
            os.link(photo, target)
            path.symlink_to(target)
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "directory":
            path.mkdir()
        elif kind in sources:
            os.link(sources[kind][row % DISTINCT], path)
        else:  # good rows, plan-stage rejects, bbox kinds, and the targets of hostile cells
            os.link(photo, path)


def kind_sources(folder: Path, photos: list[Path], rng: np.random.Generator) -> dict:
    """kind -> DISTINCT files of that kind (hostile bytes, or a convertible variant)."""
    folder.mkdir()
    makers = {
        "truncated_jpeg": lambda i, b: b[:600] if i % 4 == 0 else b[: len(b) * (i % 4 * 3) // 10],
        "jpeg_header_garbage": lambda i, b: b"\xff\xd8\xff\xe0" + rng.bytes(2000 + 997 * i),
        "garbage_bytes": lambda i, b: b"\0GARBAGE" + rng.bytes(100 + 3001 * i),
        "non_photo_format": non_photo,
        "decompression_bomb": lambda i, b: (
            png_declaring(100_000, 100_000) if i % 2 else jpeg_declaring(30_000, 30_000)
        ),
        "too_small_image": lambda i, b: encoded(Image.new("RGB", (8, 8) if i % 2 else (12, 40))),
        "extreme_aspect_image": lambda i, b: encoded(
            Image.new("RGB", (2000, 1) if i % 2 else (1000, 30), (120, 90, 60))
        ),
        **{kind: variant(kind) for kind in (*PNG_KINDS, "grayscale_jpeg", "cmyk_jpeg")},
        "exif_rotated_jpeg": exif_rotated,
    }
    sources: dict[str, list[Path]] = {}
    for kind, make in makers.items():
        sources[kind] = []
        for i in range(DISTINCT):
            path = folder / f"{kind}-{i}.jpg"
            path.write_bytes(make(i, photos[i * 7 % len(photos)].read_bytes()))
            sources[kind].append(path)
    sources["huge_file"] = []
    for i in range(DISTINCT):
        path = folder / f"huge_file-{i}.jpg"
        with path.open("wb") as handle:
            handle.truncate(64 * 2**20 + 1 + i)  # sparse: no disk used
        sources["huge_file"].append(path)
    return sources


def non_photo(i: int, data: bytes) -> bytes:
    photo = Image.open(io.BytesIO(data)).convert("RGB").resize((256, 192))
    fmt = ("GIF", "BMP", "TIFF", "WEBP", "EPS")[i % 5]
    if fmt == "EPS":
        return b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
    return encoded(photo, fmt)


def variant(kind: str):
    """A maker of a convertible photo: PNGs at 512x384 (bbox scaled), JPEGs at 1024x768."""

    def make(i: int, data: bytes) -> bytes:
        photo = Image.open(io.BytesIO(data)).convert("RGB")
        small = photo.resize((512, 384))
        if kind == "png_16_bit":
            levels = np.asarray(small.convert("L"), dtype=np.uint16) * 257
            return encoded(Image.fromarray(levels), "PNG")
        if kind == "png_palette":
            return encoded(small.quantize(colors=64), "PNG")
        if kind == "png_alpha":
            return encoded(small.convert("RGBA" if i % 2 else "LA"), "PNG")
        if kind == "png_rgb":
            return encoded(small, "PNG")
        return encoded(photo.convert("L" if kind == "grayscale_jpeg" else "CMYK"), quality=90)

    return make


def exif_rotated(i: int, data: bytes) -> bytes:
    photo = Image.open(io.BytesIO(data)).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 deg clockwise: store it 90 deg counter-clockwise
    return encoded(photo.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes())


# --- running ingest ------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """When to SIGKILL a run: `seconds` after start, or `delay` s after `shards` exist."""

    label: str = ""
    seconds: float | None = None
    shards: int | None = None
    delay: float = 0.0
    fraction: float | None = None  # seconds mode resolved at start from the shards done
    on_temp: bool = False  # once `shards` exist, kill when a shard's temporary is seen ...
    fallback: int = 0  # ... or when this many shards exist


@dataclass
class RunRecord:
    trigger: str
    seconds: float = 0.0
    killed: bool = False
    returncode: int | None = None
    shards_at_start: int = 0
    shards_at_end: int = 0
    states_at_end: int = 0
    temps_at_end: int = 0
    temps_at_kill: int | None = None  # shard temporaries seen by the poll that fired
    manifest_at_end: bool = False
    first_shard_s: float | None = None
    last_shard_s: float | None = None
    group_gone_s: float = 0.0
    code: str = ""  # source_fingerprint() when the run started
    output: str = ""

    @property
    def kept_line(self) -> str:
        lines = [line.strip() for line in self.output.splitlines() if "kept" in line]
        return lines[-1] if lines else "-"


def scan_shards(out: Path) -> tuple[int, int]:
    """(finished shards, shard temporaries) under out/shards/<split>/."""
    names = []
    if (out / "shards").is_dir():
        for split in os.scandir(out / "shards"):
            names += [e.name for e in os.scandir(split.path)] if split.is_dir() else []
    return sum(bool(SHARD_NAME.search(n)) for n in names), sum(n.endswith(".tmp") for n in names)


def count(folder: Path, pattern: re.Pattern) -> int:
    """Files in the split folders of `folder` whose name matches `pattern`."""
    if not folder.is_dir():
        return 0
    splits = [e.path for e in os.scandir(folder) if e.is_dir()]
    return sum(1 for split in splits for e in os.scandir(split) if pattern.search(e.name))


def shards_on_disk(out: Path) -> int:
    return count(out / "shards", SHARD_NAME)


def source_fingerprint() -> str:
    """sha256 of bionas's Python source as this environment imports it (so do the runs).

    Others may edit the checkout while the soak runs; a run of other code would make
    "identical" meaningless, so every run records what it ran.
    """
    folders = [Path(bionas.__file__).resolve().parent]
    for name in ("ingest", "shards", "manifests"):
        module = __import__(f"bionas.{name}", fromlist=["_"])
        folders.append(Path(module.__file__).resolve().parent)
    digest = hashlib.sha256()
    for path in sorted({p for folder in set(folders) for p in folder.rglob("*.py")}):
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def run_command(command: list[str], out: Path, trigger: Trigger | None, log: Path) -> RunRecord:
    """One `bionas ingest` in its own process group, SIGKILLed whole when `trigger` fires."""
    record = RunRecord(trigger.label if trigger else "none")
    record.shards_at_start = shards_on_disk(out)
    record.code = source_fingerprint()
    deadline = None
    if trigger and trigger.seconds is not None:
        deadline = trigger.seconds
    with log.open("w") as handle:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
        seen = record.shards_at_start
        while proc.poll() is None:
            elapsed = time.perf_counter() - start
            shards, temps = scan_shards(out)
            if shards > seen:  # when this run's first and last shard landed
                record.first_shard_s = record.first_shard_s or elapsed
                record.last_shard_s, seen = elapsed, shards
            armed = trigger and trigger.shards is not None and shards >= trigger.shards
            if armed and deadline is None and not trigger.on_temp:
                deadline = elapsed + trigger.delay
            if armed and trigger.on_temp and (temps or shards >= trigger.fallback):
                deadline, record.temps_at_kill = elapsed, temps
            if deadline is not None and elapsed >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                record.killed = True
                break
            time.sleep(POLL_S / 20 if armed and trigger.on_temp else POLL_S)  # a ms-long window
        record.seconds = time.perf_counter() - start
        record.returncode = proc.wait()
    gone = time.perf_counter()
    while group_alive(proc.pid):
        if time.perf_counter() - gone > 60:
            raise SystemExit(f"process group {proc.pid} still alive 60 s after SIGKILL")
        time.sleep(0.05)
    record.group_gone_s = time.perf_counter() - gone
    record.shards_at_end = shards_on_disk(out)
    record.states_at_end = count(out / ".state", STATE_NAME)
    record.temps_at_end = sum(1 for p in out.rglob("*.tmp"))
    record.manifest_at_end = (out / "manifest.json").exists()
    record.output = log.read_text()
    return record


def clean_run(command: list[str], out: Path, log: Path) -> RunRecord:
    """The uninterrupted run, watched: when its first and last shard landed."""
    shutil.rmtree(out, ignore_errors=True)
    return run_command(command, out, None, log)


def schedule(kills: int, clean: RunRecord, shards: int, rng: np.random.Generator) -> list:
    """Seeded kill moments over the run: plan, K-3 shares of the shards, a shard being
    written (its temporary on disk), record phase."""
    first = clean.first_shard_s or 1.0
    triggers = [Trigger(seconds=float(rng.uniform(0.3, max(0.4, 0.9 * first))))]
    middle = kills - 3
    modes = rng.permutation(["shards", "seconds"] * middle)[:middle]
    for i, mode in enumerate(modes):
        share = float(rng.uniform((i + 0.2) / middle, (i + 0.8) / middle)) * 0.95
        if mode == "shards":
            at = max(1, round(share * shards))
            delay = float(rng.uniform(0.0, 1.5))
            triggers.append(Trigger(shards=at, delay=delay))
        else:
            triggers.append(Trigger(fraction=share))
    triggers.append(Trigger(on_temp=True))
    triggers.append(Trigger(shards=shards, delay=0.0))
    return triggers


def resolve(trigger: Trigger, present: int, clean: RunRecord, shards: int) -> Trigger:
    """A trigger with its label; a seconds-by-share trigger turned into seconds from start."""
    if trigger.fraction is not None:
        first = clean.first_shard_s or 0.0
        per_shard = ((clean.last_shard_s or clean.seconds) - first) / max(shards, 1)
        todo = max(0.0, trigger.fraction * shards - present)
        seconds = first + todo * per_shard
        return Trigger(f"{seconds:.1f} s (~{trigger.fraction:.0%} of shards)", seconds=seconds)
    if trigger.on_temp:
        arm, fallback = present + 1, max(present + 1, min(present + 10, shards - 1))
        label = f"a shard temporary seen after {arm} shards (else {fallback} shards)"
        return Trigger(label, shards=arm, on_temp=True, fallback=fallback)
    if trigger.shards is None:
        return Trigger(f"{trigger.seconds:.1f} s (plan/start-up)", seconds=trigger.seconds)
    if trigger.shards >= shards:
        return Trigger(f"all {shards} shards on disk (record phase)", shards=trigger.shards)
    label = f"{trigger.shards} shards + {trigger.delay:.1f} s"
    return Trigger(label, shards=trigger.shards, delay=trigger.delay)


def soak(
    command: list[str], out: Path, triggers: list[Trigger], clean: RunRecord, shards: int,
    logs: Path, max_reruns: int,
) -> list[RunRecord]:  # fmt: skip
    """Kill at each trigger (a run that finishes first ends the kills), then rerun to the end."""
    shutil.rmtree(out, ignore_errors=True)
    runs: list[RunRecord] = []
    for trigger in triggers:
        resolved = resolve(trigger, shards_on_disk(out), clean, shards)
        runs.append(run_command(command, out, resolved, logs / f"soak-{len(runs) + 1:02d}.log"))
        print(f"  run {len(runs)}: {progress_line(runs[-1])}", flush=True)
        if not runs[-1].killed:
            break
    for _ in range(max_reruns):
        if runs[-1].returncode == 0 and not runs[-1].killed:
            break
        runs.append(run_command(command, out, None, logs / f"soak-{len(runs) + 1:02d}.log"))
        print(f"  run {len(runs)}: {progress_line(runs[-1])}", flush=True)
    return runs


def temps_seen(run: RunRecord) -> str:
    return "" if run.temps_at_kill is None else f" ({run.temps_at_kill} seen at the kill)"


def progress_line(run: RunRecord) -> str:
    what = "SIGKILL" if run.killed else f"exit {run.returncode}"
    return (
        f"{what} at {run.seconds:.1f} s (trigger: {run.trigger}); shards {run.shards_at_start} -> "
        f"{run.shards_at_end}, state records {run.states_at_end}, temporaries "
        f"{run.temps_at_end}{temps_seen(run)}; {run.kept_line}"
    )


# --- checks --------------------------------------------------------------------------


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under `root` (the lock file left out)."""
    hashes = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name != ".ingest.lock":
            hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def compare(clean: Path, soaked: Path) -> tuple[list[list[object]], bool]:
    """Rows of the comparison table, and whether the datasets are identical."""
    a, b = tree_hashes(clean), tree_hashes(soaked)
    groups = {
        "shards/*/*.tar": lambda p: p.startswith("shards/"),
        "manifest.json": lambda p: p == "manifest.json",
        "rejects.parquet (bytes)": lambda p: p == "rejects.parquet",
        "manifests/vocab_*.json": lambda p: p.startswith("manifests/"),
        ".state/*/*.json (resume records)": lambda p: p.startswith(".state/"),
    }
    rows, identical = [], True
    for name, member in groups.items():
        left = {p: h for p, h in a.items() if member(p)}
        right = {p: h for p, h in b.items() if member(p)}
        same = sum(left[p] == right.get(p) for p in left)
        ok = left == right and bool(left)
        identical &= ok
        rows.append([name, len(left), len(right), same, "yes" if ok else "NO"])
    other = sorted(set(a) ^ set(b))
    rows.append(["files in one folder only", "-", "-", len(other), "yes" if not other else "NO"])
    identical &= not other
    ra, rb = (pl.read_parquet(p / "rejects.parquet") for p in (clean, soaked))
    pairs = [Counter(zip(r["processid"], r["reason"], strict=True)) for r in (ra, rb)]
    same_set = pairs[0] == pairs[1]
    rows.append(["rejects (processid, reason) rows", ra.height, rb.height,
                 sum((pairs[0] & pairs[1]).values()), "yes" if same_set else "NO"])  # fmt: skip
    return rows, identical and same_set


def shard_samples(dataset: Path) -> Counter:
    """processid -> samples in the shards (plain tarfile; one .json member per sample)."""
    found: Counter = Counter()
    for path in sorted((dataset / "shards").glob("*/*.tar")):
        with tarfile.open(path) as tar:
            for name in tar.getnames():
                key, _, ext = name.partition(".")
                if ext == "json":
                    found[key] += 1
    return found


def expected_outcomes(expect: str) -> set[str]:
    """What may become of a row: "sample" (accepted) or one of its `|`-separated reasons."""
    return {"sample"} if expect == ACCEPT else set(expect.split("|"))


@dataclass
class Accounting:
    rows: int
    samples: int
    rejects: int
    excluded: int
    good_lost: int
    unexpected_samples: int
    unexpected_rejects: int
    outcomes: dict[str, Counter]  # kind -> what became of its rows ("sample" or a reason)
    wrong: list[str]  # a few examples of rows that did not end as expected

    def as_expected(self, kind: str) -> int:
        allowed = expected_outcomes(BY_NAME[kind].expect)
        return sum(n for outcome, n in self.outcomes[kind].items() if outcome in allowed)

    @property
    def not_as_expected(self) -> int:
        return sum(sum(c.values()) - self.as_expected(k) for k, c in self.outcomes.items())

    @property
    def ok(self) -> bool:
        return (
            self.rows == self.samples + self.rejects + self.excluded
            and self.good_lost == 0
            and self.unexpected_samples == 0
            and self.unexpected_rejects == 0
            and self.not_as_expected == 0
        )


def account(data: Dataset, dataset: Path) -> Accounting:
    """Every metadata row is a sample or a reject, each planted row as its kind expects."""
    samples = shard_samples(dataset)
    rejects = pl.read_parquet(dataset / "rejects.parquet")
    left = Counter(zip(rejects["processid"], rejects["reason"], strict=True))
    reasons_of: dict[str, list[str]] = {}
    for pid, reason in left:
        reasons_of.setdefault(pid, []).append(reason)
    manifest = json.loads((dataset / "manifest.json").read_text())
    outcomes: dict[str, Counter] = {}
    wrong, accepted = [], set()
    for kind, pid, expect in data.expect:
        allowed = expected_outcomes(expect)
        if expect == ACCEPT:
            accepted.add(pid)
        matched = [r for r in sorted(allowed) if left[(pid, r)] > 0]
        if "sample" in allowed and samples[pid]:
            outcome = "sample"
        elif matched:
            outcome = matched[0]
            left[(pid, outcome)] -= 1
        else:  # not as expected: what did happen (its reject stays unexpected)
            outcome = next(iter(reasons_of.get(pid, [])), "sample" if samples[pid] else "lost")
        outcomes.setdefault(kind, Counter())[outcome] += 1
        if outcome not in allowed and len(wrong) < 12:
            wrong.append(f"{kind} {pid!r}: expected {expect}, got {outcome}")
    return Accounting(
        rows=data.rows,
        samples=sum(samples.values()),
        rejects=rejects.height,
        excluded=int(manifest.get("excluded_by_split", 0)),
        good_lost=sum(1 for _, pid, e in data.expect if e == ACCEPT and not samples[pid]),
        unexpected_samples=sum(n for pid, n in samples.items() if pid not in accepted)
        + sum(n - 1 for n in samples.values() if n > 1),
        unexpected_rejects=sum(n for n in left.values() if n > 0),
        outcomes=outcomes,
        wrong=wrong,
    )


def verify(dataset: Path) -> int:
    proc = subprocess.run([*BIONAS, "inspect", str(dataset), "--verify"], capture_output=True)
    return proc.returncode


# --- report --------------------------------------------------------------------------


def kinds_table(data: Dataset, acc: Accounting) -> str:
    rows = []
    for kind in BY_NAME.values():
        if kind.name in acc.outcomes:
            seen = acc.outcomes[kind.name]
            planted, good = sum(seen.values()), acc.as_expected(kind.name)
            got = ", ".join(f"{outcome} {n}" for outcome, n in seen.most_common())
            rows.append([kind.name, kind.stage, kind.how, planted, f"{planted / data.rows:.2%}",
                         kind.expect.replace("|", " or "), got, planted - good])  # fmt: skip
    header = ["kind", "stage", "how planted", "rows", "% of rows", "expected", "outcome",
              "not as expected"]  # fmt: skip
    return format_table(header, rows)


def runs_table(clean: RunRecord, runs: list[RunRecord]) -> str:
    rows = [["clean", "none", f"{clean.seconds:.1f}", "-", clean.shards_at_end,
             f"{clean.states_at_end} / {clean.temps_at_end} / yes",
             f"exit {clean.returncode}", clean.kept_line]]  # fmt: skip
    for i, run in enumerate(runs, 1):
        rows.append([
            f"soak {i}", run.trigger, f"{run.seconds:.1f}", run.shards_at_start,
            run.shards_at_end, f"{run.states_at_end} / {run.temps_at_end}{temps_seen(run)} / "
            f"{'yes' if run.manifest_at_end else 'no'}",
            f"SIGKILL (group gone in {run.group_gone_s:.2f} s)" if run.killed
            else f"exit {run.returncode}",
            run.kept_line,
        ])  # fmt: skip
    header = ["run", "kill trigger", "seconds", "shards at start", "shards at end",
              "state records / temporaries / manifest.json at end", "ended",
              "kept line"]  # fmt: skip
    return format_table(header, rows)


def synth_seconds(data: Dataset) -> str:
    seconds = data.seconds["synth"]
    return "reused from an earlier run" if seconds < 0 else f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5,000 specimens, 5 kills")
    parser.add_argument("--n", type=int, help="specimens (default 100,000; quick 5,000)")
    parser.add_argument("--kills", type=int, help="SIGKILLs (default 6, quick 5; >= 3)")
    parser.add_argument("--seed", type=int, default=0, help="data, planting and kill moments")
    parser.add_argument("--pool", type=int, help="synthesized photos (default 1000, quick 200)")
    parser.add_argument("--size", type=int, default=64, help="ingest --size")
    parser.add_argument("--shard-size", type=int, help="ingest --shard-size (default n/100)")
    parser.add_argument("--workers", type=int, default=2, help="ingest --workers")
    parser.add_argument("--max-reruns", type=int, default=3, help="reruns after the last kill")
    parser.add_argument("--work", type=Path, help="data folder (default benchmarks/out/soak)")
    parser.add_argument("--results", type=Path, help="also write the report here (text)")
    parser.add_argument("--note", help="a line for the report (say, what a PYTHONPATH holds)")
    args = parser.parse_args()
    n = args.n or (5000 if args.quick else 100_000)
    kills = max(3, args.kills or (5 if args.quick else 6))  # plan, temporary, record phase
    pool = args.pool or (200 if args.quick else 1000)
    shard_size = args.shard_size or max(16, math.ceil(n / 100))
    work = (args.work or Path(OUT_DIR) / "soak").resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    command_line = env + shlex.join(["python", "benchmarks/soak_ingest.py", *sys.argv[1:]])
    info = machine()
    load_at_start = uptime_line()
    print(f"command: {command_line}\n{machine_line(info)}\n{load_at_start}\n", flush=True)

    wall = time.perf_counter()
    data = build_dataset(work, n, args.seed, pool)
    print(f"dataset: {data.rows:,} rows in {data.folder} "
          f"(synth {synth_seconds(data)}, planting {data.seconds['plant']:.1f} s)",
          flush=True)  # fmt: skip

    def command(out: Path) -> list[str]:
        return [*BIONAS, "ingest", str(data.metadata), "--images", str(data.images),
                "--bbox", str(data.bbox), "--out", str(out), "--size", str(args.size),
                "--shard-size", str(shard_size), "--workers", str(args.workers),
                "--quiet"]  # fmt: skip

    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    clean_dir, soak_dir = work / "clean", work / "soak-ds"
    print("a. clean ingest ...", flush=True)
    clean = clean_run(command(clean_dir), clean_dir, logs / "clean.log")
    if clean.returncode != 0:
        raise SystemExit(f"the clean ingest failed:\n{clean.output}")
    shards = clean.shards_at_end
    print(f"  {progress_line(clean)}; first shard {clean.first_shard_s:.1f} s, last "
          f"{clean.last_shard_s:.1f} s", flush=True)  # fmt: skip
    rng = np.random.default_rng([args.seed, 22])
    triggers = schedule(kills, clean, shards, rng)
    print(f"b. soak: {len(triggers)} kills ...", flush=True)
    start = time.perf_counter()
    runs = soak(command(soak_dir), soak_dir, triggers, clean, shards, logs, args.max_reruns)
    soak_s = time.perf_counter() - start
    print("c. comparing ...", flush=True)
    start = time.perf_counter()
    done = runs[-1].returncode == 0 and not runs[-1].killed
    compared, identical = compare(clean_dir, soak_dir) if done else ([], False)
    acc = account(data, soak_dir) if done else None
    acc_clean = account(data, clean_dir)
    verified = verify(soak_dir) if done else None
    compare_s = time.perf_counter() - start
    killed = sum(r.killed for r in runs)
    codes = {r.code for r in [clean, *runs]} | {source_fingerprint()}
    unexpected_exits = sum(1 for r in runs if not r.killed and r.returncode != 0)

    hostile = data.kinds
    lines = [
        f"command: {command_line}",
        machine_line(info),
        f"at start: {load_at_start}; at the end: {uptime_line()} (others share this machine)",
        *([f"note: {args.note}"] if args.note else []),
        "",
        f"## Data: {data.rows:,} metadata rows ({n:,} specimens + duplicated copies), "
        f"{sum(hostile.values()):,} planted in {len(hostile)} kinds "
        f"(>= {min(hostile.values()) / data.rows:.2%} of rows each); photos: a pool of {pool} "
        f"synthesized 1024x768 JPEGs hard-linked under the good rows' processids; ingest "
        f"--size {args.size} --shard-size {shard_size} --workers {args.workers}",
        "",
        kinds_table(data, acc or acc_clean),
        "",
        NOT_PLANTED,
        "",
        "## Runs (clean, then the same command killed and rerun)",
        "",
        runs_table(clean, runs),
        "",
        "## Soak vs clean",
        "",
        "Every file compared as bytes (sha256); manifest.json holds no timestamps or "
        "durations, and both commands name the same input paths, so no field is exempt.",
        "",
        format_table(["what", "clean", "soak", "identical", "verdict"], compared)
        if compared else "soak never completed: nothing to compare",
    ]  # fmt: skip
    figures = [
        ["rows in metadata.csv", data.rows],
        ["samples in shards (clean / soak)",
         f"{acc_clean.samples} / {acc.samples if acc else '-'}"],
        ["rejects (clean / soak)", f"{acc_clean.rejects} / {acc.rejects if acc else '-'}"],
        ["rows = samples + rejects + excluded (soak)",
         "yes" if acc and acc.rows == acc.samples + acc.rejects + acc.excluded else "NO"],
        ["good rows lost (clean / soak)",
         f"{acc_clean.good_lost} / {acc.good_lost if acc else '-'}"],
        ["planted rows not as expected (soak)",
         acc.not_as_expected if acc else "-"],
        ["unexpected samples / rejects (soak)",
         f"{acc.unexpected_samples} / {acc.unexpected_rejects}" if acc else "-"],
        ["kills (SIGKILL of the process group)", f"{killed} (asked {kills})"],
        ["runs exiting non-zero without a kill", unexpected_exits],
        ["soak byte-identical to clean", "yes" if identical else "NO"],
        [f"bionas source ({Path(bionas.__file__).parent}) the same in every run",
         f"yes (sha256 {next(iter(codes))})" if len(codes) == 1 else f"NO ({len(codes)} versions)"],
        ["bionas inspect --verify soak/", {0: "ok", None: "-"}.get(verified, f"exit {verified}")],
        ["wall: synth tables + pool / planting", f"{synth_seconds(data)} / "
         f"{data.seconds['plant']:.1f} s"],
        ["wall: clean ingest", f"{clean.seconds:.1f} s"],
        ["wall: soak (all runs, kills, restarts)", f"{soak_s:.1f} s"],
        ["wall: compare + account + verify", f"{compare_s:.1f} s"],
        ["wall: whole benchmark", f"{time.perf_counter() - wall:.1f} s"],
    ]  # fmt: skip
    enough = min(hostile.values()) >= 0.01 * data.rows
    passed = (
        done and identical and acc is not None and acc.ok and acc_clean.ok and enough
        and killed >= min(kills, 5) and unexpected_exits == 0 and verified == 0
        and len(codes) <= 1
    )  # fmt: skip
    lines += ["", "## Figures", "", format_table(["figure", "value"], figures)]
    wrong = (acc.wrong if acc else []) or acc_clean.wrong
    if wrong:
        lines += ["", "rows not as expected (first 12):", *[f"  {w}" for w in wrong]]
    lines += ["", f"verdict: {'PASS' if passed else 'FAIL'}"]
    report = "\n".join(lines)
    print("\n" + report, flush=True)
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(report + "\n")
        print(f"report: {args.results}")
    write_results("soak_ingest-quick.json" if args.quick else "soak_ingest.json", {
        "rows": data.rows, "kinds": data.kinds, "kills": killed, "identical": identical,
        "passed": passed, "clean_s": clean.seconds, "soak_s": soak_s,
        "runs": [{k: v for k, v in r.__dict__.items() if k != "output"} for r in runs],
        "machine": info,
    })  # fmt: skip
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
