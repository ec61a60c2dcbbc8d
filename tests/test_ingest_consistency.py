"""A dataset folder is consistent at every instant (SPEC §8, issue 11 item 3).

Whatever stops an ingest (a crash, SIGTERM, a full disk, a file size limit, a folder
that refuses writes, a flaky read), the folder is either the finished dataset or one
that readers refuse as unfinished and a rerun completes byte-identical to a clean run.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from ingest_helpers import ingest, read_samples, run_cli

from bionas.ingest import pipeline
from bionas.ingest.outdir import output_error
from bionas.ingest.transient import TransientReadError, raise_if_transient
from bionas.shards.atomic import temp_path, write_atomic

OPTIONS = ("--size", 32, "--shard-size", 4, "--min-class-count", 5)  # 40 small shards
# Runs `bionas` in a child with a file size limit (write() then fails with EFBIG; Python
# already ignores SIGXFSZ, the wrapper makes sure). Spawned workers inherit the limit.
FSIZE_WRAPPER = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(os.environ["BIONAS_TEST_FSIZE"])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
if __name__ == "__main__":
    from bionas.cli import main
    main(sys.argv[1:], prog_name="bionas")
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    run_cli("synth", out, "--n", 160, "--seed", 4, "--corrupt", 2, "--workers", 2)
    return out


@pytest.fixture(scope="module")
def reference(synth, tmp_path_factory):
    """A clean ingest: what every interrupted-then-resumed run must end up as."""
    out = tmp_path_factory.mktemp("reference") / "ds"
    ingest(synth, out, *OPTIONS, "--workers", 1)
    return out


def dataset_files(dataset: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file a reader uses: shards, manifest, vocabs, rejects."""
    paths = [dataset / "manifest.json", dataset / "rejects.parquet"]
    paths += sorted(dataset.glob("manifests/*.json")) + sorted(dataset.glob("shards/*/*"))
    return {
        str(p.relative_to(dataset)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in paths
        if p.exists()
    }


def temp_files(dataset: Path) -> list[Path]:
    return sorted(p for p in dataset.rglob("*") if p.name.endswith(".tmp"))


def cli_args(synth: Path, out: Path, *extra) -> list[str]:
    return [str(a) for a in (
        "ingest", synth / "metadata.csv", "--images", synth / "images" / "original_full",
        "--bbox", synth / "bbox.tsv", "--out", out, "--quiet", *OPTIONS, *extra,
    )]  # fmt: skip


def image_of(synth: Path, processid: str) -> Path:
    return next((synth / "images" / "original_full").rglob(f"{processid}.jpg"))


def _opened_for_writing(flags_or_mode) -> bool:
    if isinstance(flags_or_mode, int):
        return bool(flags_or_mode & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
    return any(c in str(flags_or_mode) for c in "wax+")


def fail_opens(monkeypatch, should_fail, make_error) -> None:
    """Every open (os.open, io.open, builtin open) of a path that `should_fail(path, writing)`
    raises `make_error(path)` instead, whichever of them the code under test uses."""
    real_os_open, real_open = os.open, io.open

    def os_open(path, flags, *args, **kwargs):
        if should_fail(Path(os.fsdecode(path)), _opened_for_writing(flags)):
            raise make_error(path)
        return real_os_open(path, flags, *args, **kwargs)

    def py_open(file, mode="r", *args, **kwargs):
        if isinstance(file, str | bytes | os.PathLike) and should_fail(
            Path(os.fsdecode(file)), _opened_for_writing(mode)
        ):
            raise make_error(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(io, "open", py_open)
    monkeypatch.setattr(builtins, "open", py_open)


# --- the manifest is set aside before anything is touched, and written last ----------


def test_an_interrupted_rerun_leaves_no_manifest_and_readers_say_how_to_resume(
    synth, reference, tmp_path, monkeypatch
):
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    shard = sorted((out / "shards" / "val").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the rerun must rewrite this shard
    shard.write_bytes(bytes(data))

    def interrupted(out_dir, task, result):
        raise KeyboardInterrupt  # Ctrl-C just after the shard was rewritten

    monkeypatch.setattr(pipeline, "save_state", interrupted)
    result = ingest(synth, out, *OPTIONS, ok=False)
    monkeypatch.undo()
    assert result.exit_code == 1 and "Aborted!" in result.output
    assert shard.read_bytes() != bytes(data), "the shard was not rewritten"
    assert not (out / "manifest.json").exists()  # no reader takes the folder as finished
    for command in (["inspect", out], ["train", out, "--out", tmp_path / "run"]):
        refused = run_cli(*command, ok=False)
        assert refused.exit_code != 0 and "Traceback" not in refused.output
        assert "the ingest into it did not finish; rerun it to resume" in refused.output
        assert f"bionas ingest {synth / 'metadata.csv'}" in refused.output
    # the rewritten shard is byte-identical, so its record from the first run still holds
    assert "kept 40 shards" in ingest(synth, out, *OPTIONS).output
    assert dataset_files(out) == dataset_files(reference)
    assert not (out / "manifest.incomplete.json").exists()


def test_every_file_of_the_dataset_lands_by_rename_of_an_fsynced_temporary(
    synth, tmp_path, monkeypatch
):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file an fsync was for")
    renamed, fsynced = {}, set()
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, **kwargs):
        renamed[Path(os.fsdecode(dst)).resolve()] = Path(os.fsdecode(src)).resolve()
        return real_replace(src, dst, **kwargs)

    def fsync(fd):
        fsynced.add(Path(os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "ds"
    ingest(synth, out, *OPTIONS, "--workers", 1)
    monkeypatch.undo()
    files = [p.resolve() for p in out.rglob("*") if p.is_file() and p.name != ".ingest.lock"]
    assert {"rejects.parquet", "manifest.json"} <= {p.name for p in files}
    assert any(".state" in p.parts for p in files) and any("shards" in p.parts for p in files)
    for path in files:
        assert path in renamed, f"{path} was not written under a temporary name"
        assert renamed[path] in fsynced and path.parent in fsynced, path


def test_temporary_names_are_unique_to_a_process_and_a_write(tmp_path):
    target = tmp_path / "train-000000.tar"
    names = {temp_path(target).name for _ in range(100)}
    assert len(names) == 100 and all(f".{os.getpid()}-" in name for name in names)
    write_atomic(target, b"shard")
    assert target.read_bytes() == b"shard" and [p.name for p in tmp_path.iterdir()] == [target.name]


# --- a rerun with other options, and a second ingest into the same folder -------------


def test_a_rerun_with_other_options_refuses_and_lists_what_differs(synth, reference, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    before = dataset_files(out)
    result = ingest(synth, out, *OPTIONS, "--size", 48, "--limit", 60, ok=False)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "holds a finished dataset made with other options" in result.output
    assert "--size: 32 -> 48" in result.output and "--limit: none -> 60" in result.output
    assert "--overwrite" in result.output
    # --splits would have deleted the other splits' shards at once
    result = ingest(synth, out, *OPTIONS, "--splits", "train", ok=False)
    assert result.exit_code == 1 and "--splits: none -> train" in result.output
    assert dataset_files(out) == before
    ingest(synth, out, *OPTIONS, "--splits", "train", "--overwrite")
    assert {entry["split"] for entry in read_samples(out).values()} == {"train"}


def test_a_second_ingest_into_the_same_folder_fails_at_once(synth, tmp_path, monkeypatch):
    out, second = tmp_path / "ds", []
    save_state = pipeline.save_state

    def save_and_start_another(out_dir, task, result):
        if not second:  # while the first run writes its first shard
            second.append(None)
            second[0] = ingest(synth, out, *OPTIONS, ok=False)
        save_state(out_dir, task, result)

    monkeypatch.setattr(pipeline, "save_state", save_and_start_another)
    ingest(synth, out, *OPTIONS, "--workers", 1)
    assert second[0].exit_code == 1 and "Traceback" not in second[0].output
    assert f"another bionas ingest (pid {os.getpid()}) is writing {out}" in second[0].output


# --- errors writing the output ----------------------------------------------------------


def test_a_file_size_limit_ends_the_run_with_one_line_and_the_rerun_completes(
    synth, reference, tmp_path
):
    wrapper = tmp_path / "fsize_limit.py"
    wrapper.write_text(textwrap.dedent(FSIZE_WRAPPER))
    out = tmp_path / "ds"
    env = {**os.environ, "BIONAS_TEST_FSIZE": str(8 * 1024)}  # a shard takes ~12 KB
    args = [sys.executable, str(wrapper), *cli_args(synth, out, "--workers", 2)]
    child = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert child.returncode == 1, child.stderr
    lines = child.stderr.strip().splitlines()
    assert len(lines) == 1, child.stderr
    assert lines[0].startswith(f"Error: cannot write {out / 'shards'}/")
    assert "File too large (EFBIG)" in lines[0] and "rerun the same command" in lines[0]
    assert not temp_files(out) and not (out / "manifest.json").exists()
    ingest(synth, out, *OPTIONS)
    assert dataset_files(out) == dataset_files(reference)


def test_a_folder_that_refuses_writes_ends_the_run_with_one_line(
    synth, reference, tmp_path, monkeypatch
):
    # (root ignores a read-only mode, so the refusal is injected at open)
    out = tmp_path / "ds"
    vocab_dir = out / "manifests"
    fail_opens(
        monkeypatch,
        lambda path, writing: writing and path.parent == vocab_dir,
        lambda path: PermissionError(errno.EACCES, os.strerror(errno.EACCES), path),
    )
    result = ingest(synth, out, *OPTIONS, "--workers", 1, ok=False)
    monkeypatch.undo()
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert f"cannot write {vocab_dir}/vocab_" in result.output
    assert "Permission denied (EACCES)" in result.output
    assert not temp_files(out) and not (out / "manifest.json").exists()
    assert "kept 40 shards" in ingest(synth, out, *OPTIONS).output
    assert dataset_files(out) == dataset_files(reference)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_other_output_errors_read_as_one_line_naming_the_file(code):
    error = output_error(OSError(code, os.strerror(code), "/ds/shards/train/x.tar"), Path("/ds"))
    assert error is not None and "\n" not in error.message
    assert error.message.startswith("cannot write /ds/shards/train/x.tar:")
    assert f"({errno.errorcode[code]})" in error.message


# --- reads that may pass, and rejects that are no longer true ----------------------------


@pytest.mark.parametrize(
    "code", [errno.EIO, errno.ESTALE, errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ETIMEDOUT]
)
def test_transient_read_errors_are_told_from_lasting_ones(code):
    with pytest.raises(TransientReadError) as raised:
        raise_if_transient(OSError(code, os.strerror(code)), "x.jpg")
    assert str(raised.value) == f"x.jpg: {os.strerror(code)} ({errno.errorcode[code]})"
    for lasting in (errno.ENOENT, errno.EACCES, errno.EISDIR):
        raise_if_transient(OSError(lasting, os.strerror(lasting)), "x.jpg")  # no raise


def _flaky_image_run(synth, reference, out, monkeypatch, make_error):
    """An ingest in which reading one good image fails with `make_error(path)`."""
    manifest = json.loads((reference / "manifest.json").read_text())
    processid = manifest["splits"]["train"]["shards"][1]["first_key"]
    image = image_of(synth, processid).resolve()
    fail_opens(monkeypatch, lambda path, writing: path.resolve() == image, make_error)
    result = ingest(synth, out, *OPTIONS, "--workers", 1, ok=False)
    monkeypatch.undo()
    return result, image


@pytest.mark.parametrize("raised", ["TransientReadError", "OSError(EIO)"])
def test_a_transient_read_error_fails_its_shard_and_the_rerun_redoes_it(
    synth, reference, tmp_path, monkeypatch, raised
):
    out = tmp_path / "ds"
    if raised == "TransientReadError":  # what the image reader raises for EIO & co.

        def make_error(path):
            return TransientReadError(os.fsdecode(path), "Input/output error (EIO)")
    else:  # the raw error, classified by the reader itself

        def make_error(path):
            return OSError(errno.EIO, os.strerror(errno.EIO), os.fsdecode(path))

    result, image = _flaky_image_run(synth, reference, out, monkeypatch, make_error)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert f"1 shard(s) not written: reading {image}" in result.output
    assert "(Input/output error (EIO))" in result.output
    assert "rerun the same command" in result.output
    assert not (out / "manifest.json").exists() and not (out / "rejects.parquet").exists()
    assert "kept 39 shards" in ingest(synth, out, *OPTIONS).output
    assert dataset_files(out) == dataset_files(reference)


def test_a_photo_restored_after_a_missing_file_reject_lands_on_the_rerun(synth, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(synth / "images" / "original_full", images)
    args = ["ingest", synth / "metadata.csv", "--images", images, "--bbox", synth / "bbox.tsv",
            "--quiet", *OPTIONS]  # fmt: skip
    run_cli(*args, "--out", tmp_path / "ds")
    rejects = pl.read_parquet(tmp_path / "ds" / "rejects.parquet")
    missing = rejects.filter(pl.col("reason") == "missing_file")["processid"][0]
    row = pl.read_csv(synth / "metadata.csv", infer_schema=False).filter(
        pl.col("processid") == missing
    )
    restored = images / row["split"][0] / (row["chunk"][0] or "") / f"{missing}.jpg"
    restored.parent.mkdir(parents=True, exist_ok=True)
    landed = next(iter(read_samples(tmp_path / "ds")))
    shutil.copyfile(next(images.rglob(f"{landed}.jpg")), restored)
    result = run_cli(*args, "--out", tmp_path / "ds")
    assert "kept 39 shards" in result.output
    assert missing in read_samples(tmp_path / "ds")
    run_cli(*args, "--out", tmp_path / "clean")
    assert dataset_files(tmp_path / "ds") == dataset_files(tmp_path / "clean")


# --- processes: parent death, SIGTERM ---------------------------------------------------


def _start_and_wait_for_shards(synth, out, stderr, shards: int = 3) -> subprocess.Popen:
    """`bionas ingest --workers 2` in a child, once it has written `shards` shards.

    Its output goes to a file, not a pipe: a worker outliving the child would hold a
    pipe open, and reading it to the end would wait for that worker."""
    args = [sys.executable, "-m", "bionas", *cli_args(synth, out, "--workers", 2)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 120
    while len(list((out / ".state").glob("*/*.json"))) < shards and process.poll() is None:
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be stopped"
    return process


def _children(pid: int) -> list[int]:
    import psutil

    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def _alive(pids: list[int], wait: float) -> list[int]:
    import psutil

    deadline = time.monotonic() + wait
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_workers_exit_when_the_parent_is_killed(synth, tmp_path):
    pytest.importorskip("psutil")
    with open(tmp_path / "stderr", "w") as stderr:
        process = _start_and_wait_for_shards(synth, tmp_path / "ds", stderr)
    workers = _children(process.pid)
    assert len(workers) >= 2
    process.kill()  # the parent alone, as the OOM killer would
    process.wait()
    left = _alive(workers, wait=5.0)
    for pid in left:  # don't leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their parent"


def test_sigterm_stops_like_ctrl_c_and_the_rerun_completes(synth, reference, tmp_path):
    pytest.importorskip("psutil")
    out = tmp_path / "ds"
    with open(tmp_path / "stderr", "w") as stderr:
        process = _start_and_wait_for_shards(synth, out, stderr)
    workers = _children(process.pid)
    process.terminate()
    returncode = process.wait(timeout=30)
    left = _alive(workers, wait=2.0)
    for pid in left:  # don't leave them running if the test fails
        os.kill(pid, signal.SIGKILL)
    stderr = (tmp_path / "stderr").read_text()
    assert returncode == 1 and "Aborted!" in stderr and "Traceback" not in stderr, stderr
    assert not left
    assert not temp_files(out) and not (out / "manifest.json").exists()
    assert "kept" in ingest(synth, out, *OPTIONS).output
    assert dataset_files(out) == dataset_files(reference)


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_an_out_that_is_a_file_is_refused_in_one_line(synth, tmp_path, where):
    blocker = tmp_path / "taken"
    blocker.write_text("not a dataset")
    out = blocker if where == "file" else blocker / "ds"
    result = ingest(synth, out, ok=False)
    assert result.exit_code != 0 and "is a file, or lies under one" in result.output
    assert "Traceback" not in result.output and blocker.read_text() == "not a dataset"
