"""The paper's Table I and Table II, small, on a synthetic dataset on CPU (issue 13).

Table I: the 15 experiments E001-E015 with exactly the `--ops/--fusion/--search/--genotype`
of `bionas/plans/paper-table1.toml` (read from it, not copied), at one CPU budget for all
(64 px, C = 8, 3 cells, batch 32, `--epochs`, 1 loader worker, shared-weight searches
scoring 8 genotypes on 4 validation batches). Table II: torchvision backbones from scratch
(resnet18, efficientnet_b0, mobilenet_v3_small, vit_b_16) with concat fusion at the same
budget, beside E009. E009 is also run with `--seeds` more seeds: the spread of those runs is
the noise floor against which the tables' differences are read.

    1. `bionas synth --n N --seed 0` (task `orders`), `bionas ingest --size 64
       --min-class-count 20` (target order, random 70/20/10 split), once per N
    2. one `bionas ablate DATASET --plan RUNS/plan.toml --out RUNS` (resumable: rerun the
       same command after an interruption)
    3. `bionas compare` of Table I's runs and of Table II's runs, copied with the log to
       benchmarks/results/<--results>/bench_tables-*
    4. reference lines from the shards: the majority class, and a dna_bin lookup (a test
       sample whose dna_bin occurs in train gets that bin's train order, else the majority
       class); and whether synth's dna_bin determines the order

Usage:
    python benchmarks/bench_tables.py                      # N 3000, 2 epochs: ~20 min
    python benchmarks/bench_tables.py --quick              # 4 experiments, ~2 min
    python benchmarks/bench_tables.py --n 3000 --epochs 2 --seeds 2 --vit vit_b_16
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path
from typing import Any

from _common_data import BIONAS, run_bionas, synth_once
from reporting import OUT_DIR, format_table, machine_line, uptime_line

ROOT = Path(__file__).resolve().parent.parent
PAPER_PLAN = ROOT / "bionas" / "plans" / "paper-table1.toml"
BACKBONES = ("resnet18", "efficientnet_b0", "mobilenet_v3_small")
TABLE1 = tuple(f"E{i:03d}" for i in range(1, 16))


def budget_args(epochs: int) -> list[str]:
    """The train options every experiment shares (the [defaults] of the plan)."""
    return [
        "--device", "cpu", "--image-size", "64", "--channels", "8", "--cells", "3",
        "--batch-size", "32", "--epochs", str(epochs), "--workers", "1",
        "--search-evaluations", "8", "--search-val-batches", "4",
        "--shuffle-buffer", "256", "--seed", "0", "--quiet",
    ]  # fmt: skip


EVALUATE = ["--split", "test", "--device", "cpu", "--latency-runs", "20", "--bn-batches", "8"]


def toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def make_plan(epochs: int, seeds: int, vit: str, only_quick: bool) -> tuple[str, list[str]]:
    """The plan TOML and the names of its experiments, in order."""
    paper = tomllib.loads(PAPER_PLAN.read_text())
    experiments: list[tuple[str, str, list[str]]] = [
        (e["name"], e["description"].split(" (paper:")[0], list(e["args"]))
        for e in paper["experiment"]
    ]
    assert [name for name, *_ in experiments] == list(TABLE1), "paper-table1.toml changed"
    e009 = next(args for name, _, args in experiments if name == "E009")
    for seed in range(1, seeds + 1):
        experiments.append(
            (
                f"E009-seed{seed}",
                f"E009 with --seed {seed} (noise floor)",
                [*e009, "--seed", f"{seed}"],
            )
        )
    for backbone in (*BACKBONES, *([vit] if vit else [])):
        experiments.append(
            (backbone, f"{backbone} from scratch, concat fusion (Table II)",
             ["--backbone", backbone, "--fusion", "concat"])
        )  # fmt: skip
    if only_quick:
        keep = {"E009", "E012", "E007", "resnet18"}
        experiments = [e for e in experiments if e[0] in keep]
    lines = [
        "# Written by benchmarks/bench_tables.py: paper-table1.toml's E001-E015 (their own",
        "# args) at one CPU budget, E009 with more seeds, and Table II's backbones.",
        "[plan]",
        'description = "Table I and II on a synthetic dataset on CPU (issue 13)"',
        "",
        "[defaults]",
        f"args = {toml_list(budget_args(epochs))}",
        f"evaluate = {toml_list(EVALUATE)}",
    ]
    for name, description, args in experiments:
        lines += [
            "",
            "[[experiment]]",
            f"name = {json.dumps(name)}",
            f"description = {json.dumps(description)}",
            f"args = {toml_list(args)}",
        ]
    return "\n".join(lines) + "\n", [name for name, *_ in experiments]


def make_dataset(n: int, out: Path) -> Path:
    data = synth_once(out / f"orders-{n}", n, "--seed", 0)
    dataset = out / f"orders-{n}-ds64"
    if not (dataset / "manifest.json").exists():
        run_bionas("ingest", data / "metadata.csv", "--images", data / "images" / "original_full",
                   "--bbox", data / "bbox.tsv", "--out", dataset, "--size", 64,
                   "--min-class-count", 20, "--quiet")  # fmt: skip
    return dataset


def split_labels(dataset: Path, split: str) -> list[tuple[str | None, str]]:
    """(dna_bin, order) of every sample of a split, read from its shards."""
    rows = []
    for shard in sorted((dataset / "shards" / split).glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    record = json.load(tar.extractfile(member))  # type: ignore[arg-type]
                    rows.append((record.get("dna_bin"), record["order"]))
    return rows


def references(data: Path, dataset: Path) -> dict[str, Any]:
    """Majority class and dna_bin lookup on test; how many synth bins hold several orders."""
    import polars as pl

    meta = pl.read_csv(data / "metadata.csv", columns=["dna_bin", "order"], infer_schema=False)
    per_bin = meta.drop_nulls().group_by("dna_bin").agg(pl.col("order").n_unique().alias("k"))
    train, test = split_labels(dataset, "train"), split_labels(dataset, "test")
    majority = collections.Counter(order for _, order in train).most_common(1)[0][0]
    by_bin: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for dna_bin, order in train:
        if dna_bin:
            by_bin[dna_bin][order] += 1
    seen = [(b, o) for b, o in test if b in by_bin]
    lookup = sum(
        (by_bin[b].most_common(1)[0][0] if b in by_bin else majority) == o for b, o in test
    )
    return {
        "bins": per_bin.height,
        "bins_with_several_orders": int((per_bin["k"] > 1).sum()),
        # classes after ingest folded small orders into Other (the shards keep the raw order)
        "classes": len(
            json.loads((dataset / "manifest.json").read_text())["class_counts"]["train"]
        ),
        "train": len(train),
        "test": len(test),
        "majority_class": majority,
        "majority_accuracy": sum(o == majority for _, o in test) / len(test),
        "test_seen_bin": len(seen),
        "bin_lookup_accuracy": lookup / len(test),
        "bin_lookup_accuracy_on_seen": sum(by_bin[b].most_common(1)[0][0] == o for b, o in seen)
        / max(1, len(seen)),
    }


def run_logged(command: list[str], log) -> int:  # noqa: ANN001
    """Run COMMAND, its output printed and appended to LOG; its exit status."""
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        return proc.wait()


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def pct(value: str) -> str:
    return f"{100 * float(value):.1f}" if value else "—"


def key_table(rows: list[dict[str, str]]) -> str:
    header = ["run", "network", "search", "ops", "fusion", "backbone", "acc %", "F1 macro %",
              "F1 weighted %", "unseen-BIN acc %", "params", "MB", "MFLOPs", "CPU ms",
              "train s", "wall s"]  # fmt: skip
    body = []
    for r in rows:
        if not r["accuracy"]:
            body.append([r["run"], *["—"] * (len(header) - 2), r["note"]])
            continue
        body.append([
            r["run"], r["network"], r["search"], r["ops"], r["fusion"], r["backbone"],
            pct(r["accuracy"]), pct(r["f1_macro"]), pct(r["f1_weighted"]),
            pct(r["unseen_bin_accuracy"]), f"{int(r['params']):,}", f"{float(r['size_mb']):.2f}",
            f"{1000 * float(r['gflops']):.1f}", f"{float(r['latency_cpu_ms']):.1f}",
            f"{3600 * float(r['train_hours']):.0f}",
            f"{3600 * float(r['wall_hours']):.0f}" if r["wall_hours"] else "—",
        ])  # fmt: skip
    return format_table(header, body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N 800, 1 epoch, 4 experiments")
    parser.add_argument("--n", type=int, default=3000, help="synthetic specimens")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=2, help="extra E009 seeds (noise floor)")
    parser.add_argument("--vit", default="vit_b_16", help="ViT backbone, '' for none")
    parser.add_argument("--out", type=Path, default=Path(OUT_DIR) / "tables")
    parser.add_argument("--results", default="", help="copy outputs to benchmarks/results/DIR")
    args = parser.parse_args()
    if args.quick:
        args.n, args.epochs, args.seeds, args.vit = 800, 1, 0, ""

    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.out / f"runs-n{args.n}-e{args.epochs}{'-quick' if args.quick else ''}"
    runs.mkdir(exist_ok=True)
    log_path = runs / "bench_tables.log"
    command = " ".join(["python", "benchmarks/bench_tables.py", *sys.argv[1:]])
    with open(log_path, "a") as log:  # a rerun (resume) appends to the first run's log

        def say(text: str = "") -> None:
            print(text, flush=True)
            log.write(text + "\n")
            log.flush()

        say(f"$ {command}")
        say(machine_line())
        say(f"start: {time.strftime('%Y-%m-%d %H:%M:%S')}, {uptime_line()}")
        data_start = time.perf_counter()
        dataset = make_dataset(args.n, args.out)
        data = args.out / f"orders-{args.n}"
        say(f"dataset: {dataset} ({time.perf_counter() - data_start:.0f} s to make or find)")
        ref = references(data, dataset)
        say(
            f"  {ref['train']} train / {ref['test']} test samples, {ref['classes']} classes; "
            f"synth dna_bins: {ref['bins']}, holding more than one order: "
            f"{ref['bins_with_several_orders']}"
        )
        say(
            f"  test: majority class ({ref['majority_class']}) {100 * ref['majority_accuracy']:.1f}%;"
            f" dna_bin lookup {100 * ref['bin_lookup_accuracy']:.1f}% ({ref['test_seen_bin']} of "
            f"{ref['test']} test samples have a dna_bin seen in train; on those "
            f"{100 * ref['bin_lookup_accuracy_on_seen']:.1f}%)"
        )
        plan_text, names = make_plan(args.epochs, args.seeds, args.vit, args.quick)
        plan = runs / "plan.toml"
        plan.write_text(plan_text)
        ablate_start = time.perf_counter()
        rc = run_logged([*BIONAS, "ablate", str(dataset), "--plan", str(plan), "--out",
                         str(runs)], log)  # fmt: skip
        ablate_s = time.perf_counter() - ablate_start
        say(f"ablate: exit {rc}, {ablate_s:.0f} s; {uptime_line()}")

        tables = {
            "table1": [n for n in names if n in TABLE1 or n.startswith("E009-seed")],
            "table2": [n for n in names if n not in TABLE1 and not n.startswith("E009")] + ["E009"],
        }
        outputs: list[Path] = [plan]
        for table, members in tables.items():
            folder = runs / table
            missing = [m for m in members if not (runs / m / "config.json").exists()]
            if missing:  # a failed experiment: compare refuses a folder that is not a run
                say(f"{table}: left out (failed, no run): {', '.join(missing)}; rerun to retry")
            present = [str(runs / m) for m in members if m not in missing]
            if run_logged([*BIONAS, "compare", *present, "--out", str(folder)], log) != 0:
                say(f"{table}: bionas compare failed")
                rc = rc or 1
                continue
            rows = read_csv(folder / "comparison.csv")
            say(f"\n{table} ({args.n} synthetic specimens, {args.epochs} epoch(s), seed 0):")
            say(key_table(rows))
            for suffix in ("md", "csv", "png"):
                target = runs / f"bench_tables-{table}.{suffix}"
                shutil.copyfile(folder / f"comparison.{suffix}", target)
                outputs.append(target)

        seeds = [r for r in read_csv(runs / "table1" / "comparison.csv")
                 if r["run"] == "E009" or r["run"].startswith("E009-seed")]  # fmt: skip
        spread: dict[str, Any] = {}
        if len(seeds) > 1 and all(r["accuracy"] for r in seeds):
            for key in ("accuracy", "f1_macro", "f1_weighted"):
                values = [100 * float(r[key]) for r in seeds]
                spread[key] = {"min": min(values), "max": max(values), "values": values}
            say(
                f"\nE009 over seeds {', '.join(r['run'] for r in seeds)}: "
                + "; ".join(
                    f"{k} {v['min']:.1f}-{v['max']:.1f}% (range {v['max'] - v['min']:.1f})"
                    for k, v in spread.items()
                )
            )
        wall = time.perf_counter() - started
        say(f"\nwall: {wall:.0f} s ({wall / 60:.1f} min); end {uptime_line()}")
        body = {"command": command, "n": args.n, "epochs": args.epochs, "wall_s": wall,
                "ablate_s": ablate_s, "ablate_rc": rc, "references": ref, "e009_seeds": spread,
                "plan": plan_text}  # fmt: skip
        result = runs / "bench_tables.json"
        result.write_text(json.dumps(body, indent=2) + "\n")
        outputs.append(result)
    outputs.append(log_path)
    if args.results:
        target = ROOT / "benchmarks" / "results" / args.results
        target.mkdir(parents=True, exist_ok=True)
        for path in outputs:
            name = (
                path.name if path.name.startswith("bench_tables") else f"bench_tables-{path.name}"
            )
            shutil.copyfile(path, target / name)
        print(f"copied {len(outputs)} files to {target}")
    return rc


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
