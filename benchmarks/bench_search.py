"""Does the search beat random? (paper Table I: E009 gradient search vs E007 random, E012
manual), on a task where the right operations are known in advance.

Data: `bionas synth --task pairs` (classes differ only in the angle of a pair of dots,
0/30/60/90 degrees; pooling, skip, 1x1 conv and SE cannot tell a from 90 - a, learned kxk
kernels can), through the normal `bionas ingest`. Image-only (`--meta-fields none`): the
metadata carries no class. The stem is `--stem transpose_symmetric` (a free 3x3 stem lets
pooling cells solve the task too: measured with `--stem learned`).

    1. search: the supernet, several seeds; alphas.jsonl gives the α mass on the useful
       ops (dw_sep_3x3/5x5, dil_conv_3x3/5x5) against the useless ones, per epoch
    2. candidates: each search's derived genotype; RANDOM genotypes (every edge's op drawn
       uniformly from the ten, dead cells repaired as derive does); `manual` (E012) and
       `pool_skip` (the worst plausible cell), each over several seeds for the spread
    3. each candidate trained from scratch with the same budget (epochs, batch, lr) and
       evaluated on the test split

Usage (each row of BENCHMARKS.md section 10 is one of these):
    python benchmarks/bench_search.py [--quick] [--n 1600] [--search-epochs 6]
        [--retrain-epochs 4] [--seeds 3] [--random 12] [--lr-theta auto]
        [--theta-optimizer adam] [--stem transpose_symmetric] [--jobs 2]

The retraining runs `--jobs` processes at once with one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from _common_data import run_bionas as bionas
from _common_data import synth_once
from reporting import OUT_DIR, code_version, format_table, machine_line

from bionas.trainer.genotype import BUILTIN_CELLS, EDGE_NAMES, Genotype, derive
from bionas.trainer.ops import OP_NAMES

USEFUL = ("dw_sep_3x3", "dw_sep_5x5", "dil_conv_3x3", "dil_conv_5x5")
USELESS = tuple(op for op in OP_NAMES if op not in USEFUL)


@dataclass(frozen=True)
class Budget:
    """The default is the small budget of BENCHMARKS.md section 10 (1,110 training photos,
    4 retraining epochs); `--n 3000` and `--n 6000 --search-epochs 10 --retrain-epochs 10`
    are its other rows, where most genotypes with a learned kxk conv reach the ceiling."""

    n: int = 1600  # synthetic photos (70% train)
    ingest_size: int = 64
    image_size: int = 48
    channels: int = 8
    cells: int = 3
    batch_size: int = 32
    search_epochs: int = 6
    retrain_epochs: int = 4
    lr_theta: str = "auto"
    theta_optimizer: str = "adam"
    warmup_epochs: int = 0
    stem: str = "transpose_symmetric"  # with a free stem, pooling cells solve the task too
    seeds: int = 3  # searches; each derived genotype, manual and pool_skip are retrained
    retrain_seeds: int = 2  # with this many seeds each (the seed spread)
    random: int = 12  # random genotypes, one retraining each


QUICK = Budget(n=1600, search_epochs=4, retrain_epochs=4, seeds=2, retrain_seeds=1, random=4)


def make_dataset(budget: Budget, out: Path) -> Path:
    """synth --task pairs -> ingest, once per (n, size)."""
    data = synth_once(out / f"pairs-{budget.n}", budget.n, "--task", "pairs", "--seed", 0)
    dataset = out / f"pairs-{budget.n}-ds{budget.ingest_size}"
    if not (dataset / "manifest.json").exists():
        bionas("ingest", data / "metadata.csv", "--images", data / "images" / "original_full",
               "--bbox", data / "bbox.tsv", "--out", dataset, "--size", budget.ingest_size,
               "--min-class-count", 1, "--quiet")  # fmt: skip
    return dataset


def train_args(budget: Budget, dataset: Path, run: Path, seed: int) -> list[Any]:
    return [
        "train", dataset, "--out", run, "--meta-fields", "none", "--device", "cpu",
        "--image-size", budget.image_size, "--channels", budget.channels, "--cells",
        budget.cells, "--batch-size", budget.batch_size, "--workers", 0, "--threads", 1,
        "--seed", seed, "--stem", budget.stem, "--quiet",
    ]  # fmt: skip


def search(job: tuple[Budget, Path, Path, int]) -> dict[str, Any]:
    budget, dataset, run, seed = job
    started = time.perf_counter()
    if not (run / "genotype.json").exists():
        bionas(*train_args(budget, dataset, run, seed), "--epochs", budget.search_epochs,
               "--lr-theta", budget.lr_theta, "--warmup-epochs", budget.warmup_epochs,
               "--theta-optimizer", budget.theta_optimizer)  # fmt: skip
        bionas("derive", run)
    history = [json.loads(line) for line in (run / "alphas.jsonl").read_text().splitlines()]
    return {"seed": seed, "seconds": time.perf_counter() - started,
            "mass": [useful_mass(r["alphas"]) for r in history],
            "genotype": str(run / "genotype.json")}  # fmt: skip


def useful_mass(alphas: dict[str, dict[str, float]]) -> float:
    """Mean over edges of the α mass on the useful ops (uniform: 0.4)."""
    return statistics.fmean(sum(row[op] for op in USEFUL) for row in alphas.values())


def retrain(job: tuple[Budget, Path, Path, str, int]) -> dict[str, Any]:
    budget, dataset, run, genotype, seed = job
    started = time.perf_counter()
    metrics_path = run / "eval" / "test" / "metrics.json"
    if not metrics_path.exists():
        bionas(*train_args(budget, dataset, run, seed), "--genotype", genotype,
               "--epochs", budget.retrain_epochs)  # fmt: skip
        bionas("evaluate", run, "--split", "test", "--latency-runs", 1, "--bn-batches", 0)
    report = json.loads(metrics_path.read_text())
    ops = list(report["network"]["genotype"].values())
    return {"run": str(run), "seed": seed, "accuracy": report["metrics"]["all"]["accuracy"],
            "useful_ops": sum(op in USEFUL for op in ops), "edges": len(ops),
            "ops": ops, "seconds": time.perf_counter() - started}  # fmt: skip


def random_genotype(rng: np.random.Generator, cells: int) -> Genotype:
    """Each edge's op uniformly from the ten, then derive's repair of unreachable nodes
    (so a random cell is as alive as a derived one)."""
    from bionas.trainer.encoder import reduction_flags

    alphas = {}
    for i in range(cells):
        for edge in EDGE_NAMES:
            row = rng.random(len(OP_NAMES)) * 0.01
            row[rng.integers(len(OP_NAMES))] = 1.0
            alphas[f"cell{i}.{edge}"] = row.tolist()
    return derive(alphas, reduction_flags(cells))


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    accs = [r["accuracy"] for r in rows]
    return {"n": len(accs), "mean": statistics.fmean(accs), "median": statistics.median(accs),
            "min": min(accs), "max": max(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "seed_std": seed_spread(rows)}  # fmt: skip


def seed_spread(rows: list[dict[str, Any]]) -> float | None:
    """Mean over genotypes of the std of one genotype's accuracy over retraining seeds."""
    by_genotype: dict[str, list[float]] = {}
    for r in rows:
        by_genotype.setdefault(" ".join(r["ops"]), []).append(r["accuracy"])
    spreads = [statistics.stdev(a) for a in by_genotype.values() if len(a) > 1]
    return statistics.fmean(spreads) if spreads else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--random", type=int)
    parser.add_argument("--retrain-seeds", type=int)
    parser.add_argument("--search-epochs", type=int)
    parser.add_argument("--retrain-epochs", type=int)
    parser.add_argument("--lr-theta")
    parser.add_argument("--theta-optimizer", choices=["adam", "adamw"])
    parser.add_argument("--warmup-epochs", type=int)
    parser.add_argument("--n", type=int)
    parser.add_argument("--stem")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(OUT_DIR) / "search")
    args = parser.parse_args()
    budget = QUICK if args.quick else Budget()
    given = {k: v for k, v in vars(args).items() if k in Budget.__dataclass_fields__ and v}
    budget = replace(budget, **given)
    tag = "-".join(f"{k}{v}" for k, v in sorted(given.items())) or "default"
    out = args.out / ("quick" if args.quick else "full") / tag
    out.mkdir(parents=True, exist_ok=True)
    print(machine_line(), f"commit {code_version()}", budget, sep="\n", flush=True)
    dataset = make_dataset(budget, args.out)

    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        searches = list(pool.map(search, [(budget, dataset, out / f"search-s{s}", s)
                                          for s in range(budget.seeds)]))  # fmt: skip
        jobs = [(budget, dataset, out / f"searched-s{r['seed']}-r{k}", r["genotype"], k)
                for r in searches for k in range(budget.retrain_seeds)]  # fmt: skip
        rng = np.random.default_rng(1234)
        for i in range(budget.random):
            path = out / f"random-{i}.json"
            random_genotype(rng, budget.cells).save(path)
            jobs.append((budget, dataset, out / f"random-{i}-r0", str(path), 0))
        for name in BUILTIN_CELLS:
            jobs += [(budget, dataset, out / f"{name}-r{k}", name, k)
                     for k in range(budget.seeds * budget.retrain_seeds)]  # fmt: skip
        results = list(pool.map(retrain, jobs))
    kinds = {"searched": [], "random": [], "manual": [], "pool_skip": []}
    for job, result in zip(jobs, results, strict=True):
        kinds[Path(job[2]).name.split("-")[0]].append(result)
    report(budget, searches, kinds, time.perf_counter() - started, out)


def report(budget: Budget, searches: list, kinds: dict, seconds: float, out: Path) -> None:
    print("\nα mass on the useful ops (uniform 0.400), by epoch:")
    for s in searches:
        print(f"  seed {s['seed']}: " + " ".join(f"{m:.3f}" for m in s["mass"]))
    rows = []
    for kind, results in kinds.items():
        stats = summary(results)
        useful = statistics.fmean(r["useful_ops"] for r in results)
        seed = "-" if stats["seed_std"] is None else f"{stats['seed_std']:.3f}"
        rows.append([kind, stats["n"], f"{stats['mean']:.3f} ± {stats['std']:.3f}",
                     f"{stats['median']:.3f}", f"{stats['min']:.3f}-{stats['max']:.3f}", seed,
                     f"{useful:.1f} / {results[0]['edges']}"])  # fmt: skip
    print()
    print(format_table(["genotypes", "runs", "test acc mean ± std", "median", "range",
                        "seed std", "useful ops"], rows))  # fmt: skip
    for kind in ("searched", "random"):
        for r in sorted(kinds[kind], key=lambda r: r["run"]):
            print(f"  {Path(r['run']).name}: {r['accuracy']:.3f}  {' '.join(r['ops'])}")
    body = {"budget": vars(budget), "searches": searches, "results": kinds,
            "seconds": seconds, "machine": machine_line(), "commit": code_version()}  # fmt: skip
    (out / "bench_search.json").write_text(json.dumps(body, indent=1))
    print(f"\n{seconds:.0f} s; results in {out / 'bench_search.json'}")


if __name__ == "__main__":
    main()
