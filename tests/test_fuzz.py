"""Seeded, time-bounded fuzzing of ingest's boundaries (issue 11, item 5): mutated image
bytes, metadata and bbox tables, and shards give documented rejects, clean errors or
counted losses; never a traceback, a hang, or a good row lost.

Each target runs in a child process (`fuzzing.fuzz`) until its case budget or its
seconds run out, whichever comes first, with a fixed seed: the cases are always the same
prefix of one sequence. A case that outlives its timeout is killed and reported as a hang.
`benchmarks/fuzz_ingest.py` runs the same targets for minutes.
"""

from __future__ import annotations

import csv
import os
import tarfile
import time

import polars as pl
import pytest
from click.testing import CliRunner
from fuzzing import TARGETS, Outcome, Shards, fuzz, prepare
from fuzzing.dataset import ingest_args, stream_dataset

from bionas.cli import main
from bionas.shards.format import MAX_RECORD_BYTES

SEED = 20261206
# target -> (seconds, most cases, seconds a case may take); the seconds include the
# child's start (imports, ~1-3 s), the case count is what a fast machine stops at
BUDGET = {"images": (5, 4000, 20), "tables": (9, 40, 60), "shards": (5, 400, 30)}
FEWEST = {"images": 200, "tables": 4, "shards": 20}  # run at least these, however slow


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A 48-row synthetic dataset, ingested plain and with zstd (see `fuzzing.prepare`)."""
    return prepare(tmp_path_factory.mktemp("fuzz"))


def fuzz_target(name: str, workdir) -> dict[str, int]:
    seconds, cases, timeout = BUDGET[name]
    report = fuzz(TARGETS[name], SEED, workdir, seconds, cases, timeout, FEWEST[name])
    assert not report.problems, report.describe()
    assert len(report.outcomes) >= FEWEST[name], report.describe()
    return report.tally()


def test_mutated_images_become_a_jpeg_of_the_output_size_or_a_documented_reject(workdir):
    tally = fuzz_target("images", workdir)
    rejected = sum(n for key, n in tally.items() if key.startswith("rejected "))
    assert tally["accepted"] > 0 and rejected > 0  # the mutations reach both outcomes


def test_mutated_tables_end_in_a_clean_error_or_with_every_row_accounted_for(workdir):
    tally = fuzz_target("tables", workdir)
    assert tally["ingested"] > 0  # some cases ran to the end, so their rows were counted
    assert tally["good rows lost"] == 0


def test_a_mutated_shard_is_counted_broken_and_every_other_shard_arrives(workdir):
    tally = fuzz_target("shards", workdir)
    mutated = tally["shards mutated"]
    assert tally["counted broken"] == tally["strict raised"] == tally["verify named it"] == mutated
    assert tally["untouched samples lost"] == 0


@pytest.mark.parametrize("dataset", ["ds-none", "ds-zstd"])
def test_inspect_verify_exits_1_naming_a_mutated_shard(workdir, dataset):
    shards = Shards(workdir)
    index = next(i for i in range(100) if _picks(shards, i) == dataset)
    root, victim, notes = shards.mutate(SEED, index)
    result = CliRunner().invoke(main, ["inspect", str(root), "--verify"], catch_exceptions=True)
    assert result.exit_code == 1, (notes, result.output)
    assert victim.name in result.output and "Traceback" not in result.output


def _picks(shards: Shards, index: int) -> str:
    """The dataset case `index` of the shard target mutates."""
    _, _, notes = shards.mutate(SEED, index)
    return notes[0]


def test_a_cell_bigger_than_the_record_cap_is_a_reject_and_its_shard_stays_readable(
    workdir, tmp_path
):
    """Found by the tables fuzz: a record over the reader's cap used to be written, and
    training then dropped its whole shard, good samples too."""
    synth = workdir / "synth"
    with open(synth / "metadata.csv", newline="") as handle:
        header, *rows = csv.reader(handle)
    landed = {key for key, _ in _landed(workdir / "ds-none")}
    victim = next(row for row in rows if row[header.index("processid")] in landed)
    victim[header.index("country")] = "A" * (MAX_RECORD_BYTES + 1)
    metadata = tmp_path / "metadata.csv"
    with open(metadata, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows([header, *rows])
    args = ingest_args(metadata, synth / "bbox.tsv", synth, tmp_path / "ds")
    result = CliRunner().invoke(main, args, catch_exceptions=True)
    assert result.exit_code == 0, result.output
    rejects = pl.read_parquet(tmp_path / "ds" / "rejects.parquet")
    pid = victim[header.index("processid")]
    (reason,) = rejects.filter(pl.col("processid") == pid)["reason"].to_list()
    assert reason == "record_too_large"
    samples, broken_shards = stream_dataset(tmp_path / "ds")
    assert (samples, broken_shards) == (len(landed) - 1, 0)


def _landed(root):
    """(processid, split) of every sample of a dataset, read with plain tarfile."""
    for path in sorted((root / "shards").glob("*/*.tar")):
        with tarfile.open(path) as tar:
            for name in sorted({m.name.split(".", 1)[0] for m in tar.getmembers()}):
                yield name, path.parent.name


class Stuck:
    """A fuzz target whose case 1 never ends and whose case 3 kills its own process."""

    def __init__(self, workdir) -> None:
        pass

    def run(self, seed: int, index: int) -> Outcome:
        if index == 1:
            time.sleep(3600)
        if index == 3:
            os._exit(3)
        return Outcome(index, "ok", {"cases": 1})


def test_a_case_that_hangs_is_a_reported_hang_and_one_that_dies_a_crash(tmp_path):
    report = fuzz(Stuck, SEED, tmp_path, seconds=60, max_cases=5, case_timeout=1)
    verdicts = [(o.index, o.verdict) for o in report.outcomes]
    assert verdicts == [(0, "ok"), (1, "hang"), (2, "ok"), (3, "crash"), (4, "ok")]
    assert "exit code 3" in report.outcomes[3].detail
