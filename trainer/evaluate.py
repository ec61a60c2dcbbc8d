"""`bionas evaluate`: run a trained model over a split and write metrics.json + plots (SPEC §6).

The split is streamed from the dataset's shards. Each record's raw strings are mapped
through the *run's* vocabularies, never the evaluated dataset's: so the same code
evaluates on another dataset (cross-dataset validation). There, target names the model
does not know are counted (`unknown_class_samples`) and left out of the metrics, names
the run folded into `Other` count as `Other`, and metadata fields the dataset lacks are
fed as unknown (index 0).

Metrics are reported on all samples and on the samples whose `dna_bin` never occurs in
the training split of the run's own dataset (an empty dna_bin counts as unseen).
"""

from __future__ import annotations

import json
import logging
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from bionas.errors import BionasError
from bionas.manifests.manifest import Manifest, load_manifest
from bionas.shards.format import RECORD_EXT, decode_record
from bionas.shards.reader import RawSample, ReadStats, Slot, read_samples
from bionas.shards.tario import open_shard
from bionas.trainer import efficiency, metrics, plots
from bionas.trainer.data import DECODE_ERRORS, Encoding, check_shards_exist, preprocess_image
from bionas.trainer.ops import OP_NAMES

log = logging.getLogger(__name__)

SCHEMA = "bionas.eval/1"
DNA_BIN = "dna_bin"


@dataclass(frozen=True)
class EvaluateConfig:
    run_dir: Path
    dataset_dir: Path | None = None  # None: the dataset the run was trained on
    split: str = "test"
    batch_size: int = 64
    workers: int = 0
    out_dir: Path | None = None  # None: RUN_DIR/eval/<split>
    device: str = "auto"
    latency_runs: int = 20
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BionasError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.workers < 0:
            raise BionasError(f"--workers must be >= 0, got {self.workers}")
        if self.latency_runs < 1:
            raise BionasError(f"--latency-runs must be >= 1, got {self.latency_runs}")


class SplitStream(IterableDataset):
    """Batches of one split read once in manifest order (shards split across DataLoader
    workers), labelled through `encoding` (the run's vocabularies).

    Yields dicts: images [b,3,S,S], meta [b,F], labels [b], processids, dna_bins, and
    what was left out since the previous batch: `skipped` (reason -> count) and
    `unknown_classes` (target name -> count).
    """

    def __init__(
        self, shard_paths: list[Path], encoding: Encoding, image_size: int, batch_size: int
    ):
        super().__init__()
        self.shard_paths = shard_paths
        self.encoding = encoding
        self.image_size = image_size
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        slot = Slot(worker=info.id, num_workers=info.num_workers) if info else Slot()
        stats = ReadStats()
        raw = read_samples(self.shard_paths, slot=slot, shuffle_shards=False, stats=stats)
        batch = _Batch(len(self.encoding.meta_fields))
        for sample in raw:
            batch.add(sample, self.encoding, self.image_size)
            if len(batch) == self.batch_size:
                yield batch.emit(stats)
                batch = _Batch(len(self.encoding.meta_fields))
        yield batch.emit(stats)  # the rest, and the reader's final skip counts


class _Batch:
    def __init__(self, fields: int) -> None:
        self.fields = fields
        self.images: list[torch.Tensor] = []
        self.meta: list[list[int]] = []
        self.labels: list[int] = []
        self.processids: list[str] = []
        self.dna_bins: list[str] = []
        self.skipped: Counter[str] = Counter()
        self.unknown_classes: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.labels)

    def add(self, sample: RawSample, encoding: Encoding, image_size: int) -> None:
        try:
            record = decode_record(sample.json)
            label = encoding.label(record)
            if label < 0:  # a class the model cannot know, or no label at all
                self.unknown_classes[_text(record.get(encoding.target)) or "<missing>"] += 1
                return
            image = preprocess_image(sample.jpg, image_size)
        except DECODE_ERRORS as err:
            log.warning("skipping sample %s of %s: %s", sample.key, sample.shard, err)
            self.skipped["corrupt sample"] += 1
            return
        self.images.append(image)
        self.meta.append(encoding.meta(record))
        self.labels.append(label)
        self.processids.append(str(record.get("processid") or sample.key))
        self.dna_bins.append(_text(record.get(DNA_BIN)) or "")

    def emit(self, stats: ReadStats) -> dict[str, Any]:
        n = len(self.labels)
        # the reader's counts are cumulative per worker; the main process keeps the latest
        reader = {"broken shards": stats.broken_shards, "incomplete samples": stats.incomplete_samples}  # fmt: skip
        return {
            "images": torch.stack(self.images) if n else torch.zeros(0, 3, 1, 1),
            "meta": torch.tensor(self.meta, dtype=torch.long).reshape(n, self.fields),
            "labels": torch.tensor(self.labels, dtype=torch.long),
            "processids": self.processids,
            "dna_bins": self.dna_bins,
            "skipped": dict(self.skipped),
            "unknown_classes": dict(self.unknown_classes),
            "reader": reader,
            "worker": (get_worker_info() or _MainProcess).id,
        }


class _MainProcess:
    id = 0


def training_dna_bins(manifest: Manifest, cache_dir: Path | None = None) -> tuple[set[str], str]:
    """The dna_bins of the train split and how they were found ("vocab" or "records").

    A dna_bin vocabulary counted on train only with min_count 1 lists them all; any other
    vocabulary may include val/test bins (or miss rare train bins), so the train split's
    JSON records are read instead, without decoding images, and cached by shard checksums.
    """
    try:
        vocab = manifest.vocab(DNA_BIN)
    except FileNotFoundError:
        vocab = None
    if vocab is not None and tuple(vocab.counted_splits) == ("train",) and vocab.min_count <= 1:
        return set(vocab.values[1:]), "vocab (counted on train only, min_count 1)"
    shards = manifest.shards("train")
    fingerprint = [s["sha256"] for s in shards]
    cache = cache_dir / "train_dna_bins.json" if cache_dir else None
    if cache is not None and cache.exists():
        body = json.loads(cache.read_text())
        if body.get("dataset") == str(manifest.root) and body.get("shards") == fingerprint:
            return set(body["dna_bins"]), "records of the train split (cached)"
    bins: set[str] = set()
    for path in manifest.shard_paths("train"):
        bins.update(_dna_bins_of_shard(path))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        body = {"dataset": str(manifest.root), "shards": fingerprint, "dna_bins": sorted(bins)}
        cache.write_text(json.dumps(body) + "\n")
    return bins, "records of the train split"


def _dna_bins_of_shard(path: Path) -> set[str]:
    bins = set()
    # plain tar: random-access mode seeks over the JPEG bytes; zstd must stream through them
    mode = "r|" if str(path).endswith(".zst") else "r:"
    with open_shard(path) as stream, tarfile.open(fileobj=stream, mode=mode) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(f".{RECORD_EXT}"):
                value = _text(decode_record(tar.extractfile(member).read()).get(DNA_BIN))
                if value:
                    bins.add(value)
    return bins


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Predictions:
    probs: np.ndarray  # [N, C] float32
    labels: np.ndarray  # [N] int64
    processids: list[str]
    dna_bins: list[str]
    skipped: dict[str, int]
    unknown_classes: dict[str, int]


def predict_split(
    model: torch.nn.Module,
    shard_paths: list[Path],
    encoding: Encoding,
    image_size: int,
    *,
    batch_size: int = 64,
    workers: int = 0,
    device: torch.device | str = "cpu",
    total: int | None = None,
    progress: bool = False,
) -> Predictions:
    """Class probabilities for every sample of the shards whose class the model knows."""
    from tqdm import tqdm

    stream = SplitStream(shard_paths, encoding, image_size, batch_size)
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    model = model.to(device).eval()
    probs, labels, processids, dna_bins = [], [], [], []
    skipped: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    reader: dict[int, dict[str, int]] = {}
    show = progress and sys.stderr.isatty()
    with tqdm(total=total, unit="img", desc="evaluate", disable=not show, file=sys.stderr) as bar:
        for batch in loader:
            skipped.update(batch["skipped"])
            unknown.update(batch["unknown_classes"])
            reader[batch["worker"]] = batch["reader"]
            n = len(batch["labels"])
            bar.update(n + sum(batch["skipped"].values()) + sum(batch["unknown_classes"].values()))
            if n == 0:
                continue
            with torch.inference_mode():
                logits = model(batch["images"].to(device), batch["meta"].to(device))
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
            labels.append(batch["labels"].numpy())
            processids += batch["processids"]
            dna_bins += batch["dna_bins"]
    for counts in reader.values():
        skipped.update({k: v for k, v in counts.items() if v})
    return Predictions(
        probs=np.concatenate(probs) if probs else np.zeros((0, encoding.num_classes), np.float32),
        labels=np.concatenate(labels) if labels else np.zeros(0, np.int64),
        processids=processids,
        dna_bins=dna_bins,
        skipped=dict(sorted(skipped.items())),
        unknown_classes=dict(sorted(unknown.items())),
    )


def evaluate_run(cfg: EvaluateConfig) -> dict[str, Any]:
    """Evaluate a run on a split; writes metrics.json and the PNGs, returns the report."""
    from bionas.trainer.run import load_trained

    return evaluate_trained(load_trained(cfg.run_dir, map_location="cpu"), cfg)


def evaluate_trained(run: Any, cfg: EvaluateConfig) -> dict[str, Any]:
    """`evaluate_run` for an already loaded run (`trainer.run.TrainedRun`)."""
    dataset_dir = Path(cfg.dataset_dir or run.dataset_dir)
    manifest = _manifest(dataset_dir)
    out_dir = Path(cfg.out_dir or Path(cfg.run_dir) / "eval" / cfg.split)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_fields = tuple(run.meta_fields)
    # the run's vocabularies, not the dataset's: indices must mean what they meant in training
    encoding = Encoding(run.vocabs[run.target], tuple(run.vocabs[f] for f in meta_fields))
    preds = predict_split(
        run.model,
        check_shards_exist(manifest, cfg.split),
        encoding,
        run.image_size,
        batch_size=cfg.batch_size,
        workers=cfg.workers,
        device=_device(cfg.device),
        total=manifest.num_samples(cfg.split),
        progress=cfg.progress,
    )
    model = run.model.cpu().eval()
    unseen, unseen_note = _unseen_bin_mask(run, preds.dna_bins, Path(cfg.run_dir) / "eval")
    class_names = list(run.class_names)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "run_dir": str(cfg.run_dir),
        "dataset_dir": str(dataset_dir),
        "cross_dataset": not _same_dir(dataset_dir, run.dataset_dir),
        "split": cfg.split,
        "target": run.target,
        "class_names": class_names,
        "meta_fields": {
            "used": list(meta_fields),
            "absent_from_dataset_fed_as_unknown": [
                f for f in meta_fields if f not in manifest.categorical_fields
            ],
        },
        "samples": _sample_counts(manifest.num_samples(cfg.split), preds, unseen),
        "unseen_bin_definition": unseen_note,
        "metrics": metrics.evaluation_metrics(
            preds.labels, preds.probs, class_names, unseen_bin=unseen
        ),
    }
    genotype = model.genotype() if model.theta is not None else None  # supernet: derived net
    report["efficiency"] = efficiency.efficiency_report(
        model, run.image_size, genotype=genotype, latency_runs=cfg.latency_runs
    )
    report["plots"] = _write_plots(cfg.run_dir, out_dir, preds, class_names, report, OP_NAMES)
    _write_json(out_dir / "metrics.json", report)
    report["out_dir"] = str(out_dir)
    return report


def _sample_counts(in_split: int, preds: Predictions, unseen: np.ndarray | None) -> dict[str, Any]:
    """Where every sample of the split went; `not_read` are samples the manifest lists but
    the shards did not yield (a shard cut at a member boundary reads as a shorter tar)."""
    seen = len(preds.labels) + sum(preds.unknown_classes.values())
    seen += sum(n for reason, n in preds.skipped.items() if reason != "broken shards")
    not_read = max(in_split - seen, 0)
    if not_read:
        log.warning("%d sample(s) listed in manifest.json were not read from the shards", not_read)
    return {
        "in_split": in_split,
        "evaluated": int(len(preds.labels)),
        "unknown_class_samples": sum(preds.unknown_classes.values()),
        "unknown_classes": preds.unknown_classes,
        "skipped": preds.skipped,
        "not_read": not_read,
        "unseen_bin": None if unseen is None else int(unseen.sum()),
    }


def _write_plots(
    run_dir: Path,
    out_dir: Path,
    preds: Predictions,
    class_names: list[str],
    report: dict[str, Any],
    op_names: tuple[str, ...],
) -> dict[str, str | None]:
    """Draw every plot whose data exists: plot name -> file name, or None without data."""
    written: dict[str, str | None] = {}
    matrix = report["metrics"]["all"].get("confusion_matrix")
    title = f"Confusion matrix, {report['split']} (row-normalised, n={len(preds.labels)})"
    if matrix is not None:
        plots.plot_confusion_matrix(matrix, class_names, out_dir / "confusion_matrix.png", title=title)  # fmt: skip
    written["confusion_matrix"] = "confusion_matrix.png" if matrix is not None else None
    plots.plot_roc_curves(preds.labels, preds.probs, class_names, out_dir / "roc.png")
    written["roc"] = "roc.png"
    for name, source, draw in (
        ("alphas", "alphas.jsonl", lambda h, p: plots.plot_alphas(h, p, op_names)),
        ("training_curves", "epochs.jsonl", plots.plot_training_curves),
    ):
        path = Path(run_dir) / source
        history = plots.read_jsonl(path) if path.exists() else []
        if name == "alphas":  # a fixed network has no α: nothing to draw
            history = [r for r in history if r.get("alphas")]
        if history:
            draw(history, out_dir / f"{name}.png")
        written[name] = f"{name}.png" if history else None
    return written


def _unseen_bin_mask(
    run: Any, dna_bins: list[str], cache_dir: Path
) -> tuple[np.ndarray | None, str]:
    train_dir = Path(run.dataset_dir)
    try:
        train_manifest = load_manifest(train_dir)
        known, source = training_dna_bins(train_manifest, cache_dir)
    except (FileNotFoundError, KeyError, ValueError) as err:
        log.warning("no unseen-dna_bin metrics: cannot read the training split (%s)", err)
        return None, f"not computed: the run's training dataset cannot be read ({err})"
    mask = metrics.unseen_bin_mask(dna_bins, known)
    note = (
        f"dna_bin empty or not among the {len(known)} dna_bins of the train split of "
        f"{train_dir} (from {source})"
    )
    return mask, note


def _manifest(dataset_dir: Path) -> Manifest:
    try:
        return load_manifest(dataset_dir)
    except (FileNotFoundError, ValueError) as err:
        raise BionasError(str(err)) from err


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BionasError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def _same_dir(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _write_json(path: Path, body: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)
