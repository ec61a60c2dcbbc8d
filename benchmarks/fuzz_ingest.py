"""A longer seeded fuzz of ingest's three boundaries than the test suite's (tests/test_fuzz.py
runs the same targets for ~6-10 s each): figures, not a speed claim, so no baseline.

Targets (tests/fuzzing/, one child process each, killed and restarted on a hang):

  images   mutated JPEG/PNG bytes (bit flips, 0x00/0xFF/0x7F/0x80 bytes, truncation, PNG
           chunk / JPEG segment duplication and deletion, declared sizes, splices of two
           files) through `read_image` + `process_image` at --size 32: a JPEG of the
           output size, or an ImageReject with a reason the README documents
  tables   a 48-row `bionas synth` dataset whose metadata.csv and bbox.tsv rows are
           mutated (ragged rows, quote chaos, NUL, invalid UTF-8, huge numbers, n/a and
           negative coordinates, duplicated processids, blank lines, CRLF, ...) then
           ingested for real: a clean error, or rows in shards + rejects = rows written
           and every untouched row landed unchanged
  shards   one train shard (.tar or .tar.zst) of that dataset mutated (header flips,
           header fields with fixed checksums, payload flips, truncation, appended bytes,
           zeroed blocks, splices) and read by the trainer's reader and batch stream:
           counted broken, losses counted, CorruptDataError under strict, every other
           shard's samples delivered, `verify_dataset` naming it

A crash is an exception the code under test let escape (or a dead process), a hang a case
past its timeout, a failure a broken promise (a good row lost, an uncounted loss, an
undocumented reject). Reproduce case I of a target T with seed S:
`fuzzing.prepare(W); fuzzing.TARGETS[T](W).run(S, I)` (tests/ on sys.path).

    python benchmarks/fuzz_ingest.py --quick                 # 10 s per target
    python benchmarks/fuzz_ingest.py --seconds 120 --seed 1  # 2 min per target
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from reporting import format_table, machine, machine_line, uptime_line, write_results

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the fuzz targets live beside the test that runs them

import fuzzing  # noqa: E402

CASE_TIMEOUT_S = {"images": 20, "tables": 60, "shards": 30}
# per target: the tally keys that count bad inputs caught, and the good data lost
CAUGHT = {"images": ("rejected ",), "tables": ("rows rejected", "refused "),
          "shards": ("counted broken",)}  # fmt: skip
LOST = {"images": None, "tables": "good rows lost", "shards": "untouched samples lost"}


def summary_row(name: str, report: fuzzing.Report) -> list[object]:
    tally = report.tally()
    caught = sum(n for key, n in tally.items() if key.startswith(CAUGHT[name]))
    lost = tally[LOST[name]] if LOST[name] else "-"
    return [name, len(report.outcomes), f"{len(report.outcomes) / report.seconds:.1f}",
            tally["crash"], tally["hang"], tally["failure"], caught, lost]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=120.0, help="per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="images,tables,shards")
    parser.add_argument("--quick", action="store_true", help="10 s per target")
    parser.add_argument("--work", type=Path, help="folder for the dataset (default: a temp dir)")
    args = parser.parse_args()
    seconds = 10.0 if args.quick else args.seconds
    names = args.targets.split(",")
    info = machine()
    print(f"{machine_line(info)}\n{uptime_line()}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="bionas-fuzz-") as temp:
        work = fuzzing.prepare(args.work or Path(temp))
        reports = {}
        for name in names:
            print(f"fuzzing {name} for {seconds:g} s (seed {args.seed}) ...", flush=True)
            reports[name] = fuzzing.fuzz(fuzzing.TARGETS[name], args.seed, work, seconds,
                                         10**9, CASE_TIMEOUT_S[name])  # fmt: skip
    print(f"\n## Fuzz figures, seed {args.seed}, {seconds:g} s per target\n")
    header = ["target", "cases", "cases/s", "crashes", "hangs", "failures",
              "bad inputs caught", "good lost"]  # fmt: skip
    print(format_table(header, [summary_row(n, r) for n, r in reports.items()]))
    print("\nbad inputs caught: images rejected with a documented reason; table rows in "
          "rejects.parquet plus whole ingests refused with a clean error; shards counted "
          "broken. good lost: untouched table rows that did not land unchanged; samples "
          "of untouched shards missing from the trainer's batches.")  # fmt: skip
    for name, report in reports.items():
        print(f"\n### {name}: every count\n")
        rows = [[key, n] for key, n in sorted(report.tally().items())]
        print(format_table(["count", "total"], rows))
        if report.problems:
            print("\n" + report.describe(limit=20))
    print(f"\n{machine_line(info)}\n{uptime_line()}")
    write_results(
        f"fuzz_ingest-seed{args.seed}-{seconds:g}s.json",
        {"seed": args.seed, "seconds": seconds, "machine": info,
         "targets": {n: {"cases": len(r.outcomes), "seconds": r.seconds,
                         "tally": dict(r.tally()),
                         "problems": [vars(o) for o in r.problems]}
                     for n, r in reports.items()}},
    )  # fmt: skip


if __name__ == "__main__":
    main()
