"""`--search random|evolution|reinforce|enas`: shared-weight searches that end as darts
does (genotype.json, `--genotype`, `--retrain-epochs`), and the pieces they are made of."""

from __future__ import annotations

import contextlib
import json
import random
from collections import deque
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from datasets import make_tiny_dataset  # tests/datasets.py

from bionas.cli import main
from bionas.trainer.config import SEARCHES
from bionas.trainer.genotype import Genotype
from bionas.trainer.logs import read_jsonl
from bionas.trainer.model import ModelConfig, build_model
from bionas.trainer.ops import OP_NAMES, OP_SETS
from bionas.trainer.search import SHARED_WEIGHT, STRATEGIES
from bionas.trainer.search.evolution import Member, evolve_step
from bionas.trainer.search.policy import reinforce_update, sample_policy
from bionas.trainer.search.scoring import Score, score_path
from bionas.trainer.search.shared import SearchContext, Strategy, select_path
from bionas.trainer.search.space import (
    edges_changed,
    from_genotype,
    mutate,
    reachable,
    sample_uniform,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")
TINY = ["--device", "cpu", "--image-size", "16", "--cells", "2", "--channels", "4",
        "--batch-size", "8", "--workers", "0", "--shuffle-buffer", "16", "--quiet"]  # fmt: skip
BUDGET = ["--search-evaluations", "5", "--population", "3", "--sample-size", "2",
          "--search-val-batches", "2"]  # fmt: skip
FULL = OP_SETS["full"]


def bionas(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("search") / "ds", n=32, shards_per_split=2)


def tiny_supernet(ops: str = "full"):
    torch.manual_seed(0)
    return build_model(ModelConfig(num_classes=3, channels=4, cells=2, embed_dim=8, ops=ops))


def as_path(cells):
    return tuple(tuple(c) for c in cells)


# --- end to end through the CLI --------------------------------------------------------


@pytest.mark.parametrize("search", [s for s in SEARCHES if s != "darts"])
def test_each_search_writes_a_genotype_that_retrains_and_its_history(dataset, tmp_path, search):
    run = tmp_path / search
    result = bionas("train", dataset, "--out", run, "--search", search, "--epochs", "2",
                    "--retrain-epochs", "1", *BUDGET, *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output
    genotype = Genotype.load(run / "genotype.json")
    genotype.check_reachable()
    outcome = json.loads((run / "search.json").read_text())
    assert outcome["strategy"] == search and outcome["finished"]
    assert as_path(outcome["genotype"]) == from_genotype(genotype)
    history = read_jsonl(run / "search_history.jsonl")
    assert [r["evaluation"] for r in history] == list(range(1, len(history) + 1))
    assert all(0 <= r["val_acc"] <= 1 and r["samples"] == 8 for r in history)
    chosen = [r for r in history if as_path(r["genotype"]) == from_genotype(genotype)]
    assert chosen and max(r["val_acc"] for r in chosen) == outcome["val_acc"]
    spent = outcome["spent"]
    assert spent["evaluations"] == len(history) and spent["val_images_scored"] == 8 * len(history)
    assert spent["weight_steps"] == 8 and spent["images_seen"] == 64  # 2 epochs x 32 images
    assert spent["wall_seconds"] > 0
    if search in ("random", "evolution"):
        assert len(history) == 5 and spent["policy_updates"] == 0
    else:
        assert spent["policy_updates"] == 5
    steps = read_jsonl(run / "steps.jsonl")
    assert {s["kind"] for s in steps} == {"w"}  # no θ step: the weights only
    # --retrain-epochs trained that genotype from scratch in RUN_DIR/final
    final = json.loads((run / "final/config.json").read_text())
    assert Genotype.from_json(json.dumps(final["model_config"]["genotype"])).cells == (
        genotype.cells
    )
    derived = bionas("derive", run)  # derive agrees with the search's choice
    assert derived.exit_code == 0 and Genotype.load(run / "genotype.json") == genotype


def test_a_searched_genotype_is_a_normal_genotype_for_train(dataset, tmp_path):
    search = tmp_path / "search"
    args = ["--search", "random", "--ops", "conv-only", "--epochs", "1", *BUDGET, *TINY]
    assert bionas("train", dataset, "--out", search, *args).exit_code == 0
    history = read_jsonl(search / "search_history.jsonl")
    assert {op for r in history for cell in r["genotype"] for op in cell} <= set(
        OP_SETS["conv-only"]
    )
    evaluated = bionas("evaluate", search, "--split", "val", "--latency-runs", "1",
                       "--bn-batches", "1")  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((search / "eval/val/metrics.json").read_text())
    chosen = json.loads((search / "search.json").read_text())["genotype"]
    assert list(metrics["network"]["genotype"].values()) == [op for c in chosen for op in c]
    fixed = tmp_path / "fixed"
    result = bionas("train", dataset, "--out", fixed, "--genotype", search / "genotype.json",
                    "--max-steps", "2", *TINY)  # fmt: skip
    assert result.exit_code == 0, result.output


def test_an_interrupted_search_resumes_to_the_same_choice(dataset, tmp_path):
    args = ["--search", "enas", "--epochs", "2", *BUDGET, *TINY]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert bionas("train", dataset, "--out", straight, *args).exit_code == 0
    assert bionas("train", dataset, "--out", stopped, *args, "--max-steps", "6").exit_code == 0
    assert not (stopped / "genotype.json").exists()
    assert bionas("train", dataset, "--out", stopped, "--resume").exit_code == 0
    assert (stopped / "genotype.json").read_text() == (straight / "genotype.json").read_text()
    key = ("evaluation", "phase", "genotype", "val_acc", "baseline")
    a, b = (read_jsonl(r / "search_history.jsonl") for r in (straight, stopped))
    assert [[r.get(k) for k in key] for r in a] == [[r.get(k) for k in key] for r in b]
    again = bionas("train", dataset, "--out", stopped, "--resume")  # finished: nothing to do
    assert again.exit_code == 0
    longer = bionas("train", dataset, "--out", stopped, "--resume", "--epochs", "3")
    assert longer.exit_code == 1 and "cannot search on" in longer.output


def test_a_search_killed_while_scoring_starts_the_scoring_again(dataset, tmp_path, monkeypatch):
    run = tmp_path / "run"
    args = ["--search", "random", "--epochs", "1", *BUDGET, *TINY]

    def dies_after_two(ctx):
        rng = random.Random(0)
        for _ in range(2):
            ctx.evaluate(ctx.sample_uniform(rng), "search")
        raise RuntimeError("killed")

    monkeypatch.setitem(SHARED_WEIGHT, "random", Strategy("random", dies_after_two))
    with pytest.raises(RuntimeError, match="killed"):
        bionas("train", dataset, "--out", run, *args)
    assert len(read_jsonl(run / "search_history.jsonl")) == 2
    monkeypatch.undo()
    assert bionas("train", dataset, "--out", run, "--resume").exit_code == 0
    assert len(read_jsonl(run / "search_history.jsonl")) == 5  # not 7


def test_search_options_are_checked(dataset, tmp_path):
    refused = bionas("train", dataset, "--out", tmp_path / "r", "--search", "evolution",
                     "--population", "4", "--search-evaluations", "3", *TINY)  # fmt: skip
    assert refused.exit_code == 1 and "must be >= --population" in refused.output
    refused = bionas("train", dataset, "--out", tmp_path / "h", "--search", "random",
                     "--arch-data", "heldout", *TINY)  # fmt: skip
    assert refused.exit_code == 1 and "--search random has none" in refused.output


# --- the pieces ------------------------------------------------------------------------


def test_the_registry_holds_every_search_the_cli_offers():
    assert tuple(STRATEGIES) == SEARCHES


def test_a_path_forward_computes_only_the_chosen_ops():
    model = tiny_supernet()
    calls: list[str] = []
    for name, module in model.named_modules():
        if ".ops." in name and name.count(".") == 5:  # image_encoder.cells.I.EDGE.ops.OP
            module.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    path = (("dw_sep_3x3", "skip", "zero"), ("conv_1x1", "zero", "max_pool_3x3"))
    model(torch.randn(2, 3, 16, 16), path=path)
    assert sorted(calls) == sorted([
        "image_encoder.cells.0.e1.ops.dw_sep_3x3", "image_encoder.cells.0.e2a.ops.skip",
        "image_encoder.cells.1.e1.ops.conv_1x1", "image_encoder.cells.1.e2b.ops.max_pool_3x3",
    ])  # fmt: skip
    calls.clear()
    model(torch.randn(2, 3, 16, 16))  # the soft supernet runs all nine non-zero ops per edge
    assert len(calls) == 2 * 3 * 9


def test_a_path_outside_the_op_set_is_refused():
    with pytest.raises(ValueError, match="not in op set reduced"):
        tiny_supernet("reduced")(torch.randn(1, 3, 16, 16), path=(("se",) * 3, ("skip",) * 3))


def test_theta_set_to_a_path_derives_it_and_computes_just_that_path():
    model = tiny_supernet().eval()
    path = (("dw_sep_5x5", "skip", "se"), ("dil_conv_3x3", "avg_pool_3x3", "zero"))
    select_path(model, path)
    assert from_genotype(model.genotype()) == path
    x = torch.randn(2, 3, 16, 16)
    assert torch.allclose(model(x), model(x, path=path), atol=1e-6)


@pytest.mark.parametrize("seed", range(20))
def test_mutation_changes_exactly_one_edge_and_keeps_the_path_reachable(seed):
    rng = random.Random(seed)
    path = sample_uniform(rng, 3, FULL)
    child = mutate(path, rng, FULL)
    assert edges_changed(path, child) == 1 and reachable(child)


def test_uniform_paths_are_reachable_and_use_only_the_set():
    rng = random.Random(0)
    paths = [sample_uniform(rng, 2, OP_SETS["reduced"]) for _ in range(200)]
    assert all(reachable(p) for p in paths)
    used = {op for p in paths for cell in p for op in cell}
    assert used == set(OP_SETS["reduced"])


def member(path, acc):
    return Member(path, Score(acc, 1.0 - acc, 8))


def test_an_evolution_step_mutates_the_tournament_winner_and_ages_out_the_oldest():
    rng = random.Random(0)
    paths = [sample_uniform(rng, 2, FULL) for _ in range(4)]
    population = deque(member(p, acc) for p, acc in zip(paths, (0.9, 0.1, 0.5, 0.3), strict=True))
    scored = []
    child = evolve_step(population, rng, 4, FULL, lambda p: scored.append(p) or Score(0.2, 1, 8))
    assert scored == [child.path]
    assert edges_changed(child.path, paths[0]) == 1  # from the best of the tournament
    assert [m.path for m in population] == [*paths[1:], child.path]  # the oldest left


def test_evolution_climbs_towards_better_genotypes():
    rng = random.Random(1)

    def score(path):  # a known optimum: conv_1x1 on every edge
        return Score(sum(op == "conv_1x1" for cell in path for op in cell) / 9, 0.0, 8)

    population = deque()
    for _ in range(6):
        path = sample_uniform(rng, 3, FULL)
        population.append(Member(path, score(path)))
    start = max(m.score.val_acc for m in population)
    children = [evolve_step(population, rng, 3, FULL, score) for _ in range(120)]
    assert max(c.score.val_acc for c in children) >= start + 3 / 9


def test_the_best_scored_genotype_is_chosen():
    ctx = SearchContext(session=None, model=None, opts=None, state=None)
    ctx.history = [
        {"evaluation": 1, "phase": "search", "genotype": [["skip"] * 3], "val_acc": 0.5,
         "val_loss": 0.9, "samples": 8},
        {"evaluation": 2, "phase": "search", "genotype": [["se"] * 3], "val_acc": 0.75,
         "val_loss": 0.9, "samples": 8},
        {"evaluation": 3, "phase": "search", "genotype": [["skip", "zero", "se"]],
         "val_acc": 0.75, "val_loss": 0.4, "samples": 8},
        # a policy's draw that cuts z2 off (derive would restore an edge): never chosen
        {"evaluation": 4, "phase": "search", "genotype": [["zero"] * 3], "val_acc": 1.0,
         "val_loss": 0.1, "samples": 8},
        {"evaluation": 5, "phase": "select", "genotype": [["conv_1x1"] * 3], "val_acc": 1.0,
         "val_loss": 0.1, "samples": 8},
    ]  # fmt: skip
    path, score = ctx.best(("search",))
    assert path == (("skip", "zero", "se"),) and score.val_acc == 0.75  # ties: lower loss


def test_a_reward_above_the_baseline_raises_the_logit_of_the_chosen_op():
    model = tiny_supernet()
    optimizer = torch.optim.Adam([model.theta], lr=0.1)
    before = model.theta.detach().clone()
    path = (("se", "skip", "zero"), ("conv_1x1", "zero", "skip"))
    reinforce_update(model, optimizer, path, reward=0.9, baseline=0.5)
    k = OP_NAMES.index("se")
    assert model.theta[0, 0, k] > before[0, 0, k]
    others = [j for j in range(len(OP_NAMES)) if j != k]
    assert (model.theta[0, 0, others] < before[0, 0, others]).all()
    reinforce_update(model, optimizer, path, reward=0.0, baseline=0.5)  # below: lowered
    lowered = model.theta[0, 0, k].item()
    reinforce_update(model, optimizer, path, reward=0.0, baseline=0.5)
    assert model.theta[0, 0, k] < lowered


def test_the_policy_draws_only_ops_of_the_set():
    model = tiny_supernet("conv-only")
    probs = torch.softmax(model.theta.detach() + model.theta_mask, -1)
    rng = random.Random(0)
    drawn = {op for _ in range(100) for cell in sample_policy(rng, probs) for op in cell}
    assert drawn == set(OP_SETS["conv-only"])


def test_scoring_uses_batch_statistics_and_puts_the_running_ones_back():
    model = tiny_supernet().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [
        _Batch(torch.randn(4, 3, 16, 16), torch.zeros(4, 0).long(), torch.tensor([0, 1, 2, 0]))
    ]
    session = SimpleNamespace(device=torch.device("cpu"),
                              amp=SimpleNamespace(autocast=contextlib.nullcontext),
                              config=SimpleNamespace(label_smoothing=0.1))  # fmt: skip
    path = (("dw_sep_3x3", "skip", "se"), ("conv_1x1", "zero", "skip"))
    score = score_path(model, path, batches, session)
    assert score.samples == 4 and 0 <= score.val_acc <= 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training


class _Batch(SimpleNamespace):
    def __init__(self, images, meta, labels):
        super().__init__(images=images, meta=meta, labels=labels)

    def __len__(self):
        return int(self.labels.shape[0])
