"""Genotypes: argmax derivation, cut edges, JSON round-trip, rendering."""

import json

import pytest
import torch

from bionas.errors import BionasError
from bionas.trainer.genotype import Genotype, derive, render
from bionas.trainer.ops import OP_NAMES
from bionas.trainer.run import load_genotype

K = len(OP_NAMES)


def row(winner: str, top: float = 0.5) -> list[float]:
    rest = (1.0 - top) / (K - 1)
    return [top if n == winner else rest for n in OP_NAMES]


def alphas_for(ops_per_cell: list[tuple[str, str, str]]) -> dict[str, list[float]]:
    return {
        f"cell{i}.{edge}": row(op)
        for i, ops in enumerate(ops_per_cell)
        for edge, op in zip(("e1", "e2a", "e2b"), ops, strict=True)
    }


@pytest.fixture
def genotype() -> Genotype:
    ops = [("dw_sep_3x3", "skip", "zero"), ("se", "max_pool_3x3", "dil_conv_5x5")]
    return derive(alphas_for(ops), [False, True])


def test_derive_takes_the_argmax_op_of_every_edge(genotype):
    assert [[e.op for e in c.edges] for c in genotype.cells] == [
        ["dw_sep_3x3", "skip", "zero"],
        ["se", "max_pool_3x3", "dil_conv_5x5"],
    ]
    assert genotype.reduction_flags == (False, True)
    assert genotype.cells[1].op("e2a") == "max_pool_3x3"
    assert genotype.cells[0].edges[0].alphas == pytest.approx(tuple(row("dw_sep_3x3")))


def test_derive_marks_an_edge_where_zero_won_as_cut(genotype):
    cuts = [(c.index, e.edge) for c in genotype.cells for e in c.edges if e.cut]
    assert cuts == [(0, "e2b")]


def test_derive_accepts_tensors_and_breaks_ties_towards_the_first_op():
    alphas = {f"cell0.{e}": torch.full((K,), 1.0 / K) for e in ("e1", "e2a", "e2b")}
    cell = derive(alphas, [False]).cells[0]
    assert [e.op for e in cell.edges] == [OP_NAMES[0]] * 3


def test_derive_rejects_a_row_of_the_wrong_length():
    alphas = {f"cell0.{e}": [0.5, 0.5] for e in ("e1", "e2a", "e2b")}
    with pytest.raises(ValueError, match="cell0.e1"):
        derive(alphas, [False])


def test_json_round_trip_through_a_file(genotype, tmp_path):
    path = tmp_path / "genotype.json"
    genotype.save(path)
    assert Genotype.load(path) == genotype
    assert Genotype.from_json(genotype.to_json()) == genotype
    data = json.loads(path.read_text())
    assert data["cells"][0]["edges"]["e2b"]["op"] == "zero"
    assert set(data["cells"][0]["edges"]["e1"]["alphas"]) == set(OP_NAMES)


def test_a_hand_written_genotype_without_alphas_loads():
    text = json.dumps(
        {
            "format": "bionas.genotype/1",
            "cells": [
                {
                    "index": 0,
                    "reduction": True,
                    "edges": {"e1": {"op": "skip"}, "e2a": {"op": "se"}, "e2b": {"op": "zero"}},
                }  # fmt: skip
            ],
        }
    )
    cell = Genotype.from_json(text).cells[0]
    assert cell.reduction and cell.op("e2a") == "se" and cell.edges[2].cut
    assert cell.edges[0].alphas[OP_NAMES.index("skip")] == 1.0


def test_loading_a_genotype_with_an_unknown_op_names_cell_edge_and_op(tmp_path):
    path = tmp_path / "bad.json"
    edges = {"e1": {"op": "conv_7x7"}, "e2a": {"op": "se"}, "e2b": {"op": "skip"}}
    cells = [{"index": 0, "reduction": False, "edges": edges}]
    path.write_text(json.dumps({"format": "bionas.genotype/1", "cells": cells}))
    with pytest.raises(ValueError, match=r"bad\.json.*cell 0 edge e1.*conv_7x7"):
        Genotype.load(path)


def test_render_shows_every_cell_edge_and_cut(genotype):
    text = render(genotype)
    assert "cell 0 (normal):" in text and "cell 1 (reduction):" in text
    assert "x -> z1: dw_sep_3x3 [D3] (α=0.500; next " in text
    assert "z1 -> z2: edge cut (zero won" in text
    assert text.count(" -> ") == 6
    assert "near tie" not in text  # 0.5 against 0.056: every edge decided


def test_near_ties_are_flagged_per_edge_and_summed_up():
    decided = row("se", top=0.5)
    close = [0.105 if n == "se" else 0.1 for n in OP_NAMES]  # se leads the rest by 5%
    barely = [0.12 if n == "se" else 0.1 for n in OP_NAMES]  # a 20% lead is decided
    rows = {"cell0.e1": decided, "cell0.e2a": close, "cell0.e2b": barely}
    genotype = derive(rows, [False])
    assert genotype.near_ties == ["cell0.e2a"]
    edge = genotype.cells[0].edges[1]
    assert edge.op == "se" and edge.alpha == pytest.approx(0.105)
    assert edge.runner_up == (OP_NAMES[0], pytest.approx(0.1))  # first of the equal rest
    text = render(genotype)
    assert text.count("near tie") == 2  # the edge's line and the summary
    assert "1 of 3 edges are near ties" in text and "--lr-theta" in text


def test_a_uniform_search_is_all_near_ties_and_a_one_hot_genotype_none():
    uniform = {f"cell0.{e}": [1.0 / K] * K for e in ("e1", "e2a", "e2b")}
    assert len(derive(uniform, [False]).near_ties) == 3
    hand_written = Genotype.from_json(
        json.dumps(
            {
                "format": "bionas.genotype/1",
                "cells": [
                    {
                        "index": 0,
                        "reduction": False,
                        "edges": {e: {"op": "skip"} for e in ("e1", "e2a", "e2b")},
                    }
                ],
            }  # fmt: skip
        )
    )
    assert hand_written.near_ties == []


@pytest.mark.parametrize(
    "text",
    [
        '{"format": "something-else", "cells": []}',
        '{"format": "bionas.genotype/1", "cells": []}',
        '{"format": "bionas.genotype/1", "cells": [{"index": 0, "reduction": false}]}',
        "not json",
    ],
)
def test_malformed_genotype_text_raises_value_error(text):
    with pytest.raises(ValueError):
        Genotype.from_json(text)


def test_zero_winning_e1_is_restored_with_the_best_nonzero_op_so_z1_keeps_a_path():
    rows = alphas_for([("zero", "skip", "se")])
    rows["cell0.e1"] = [0.05] * K
    rows["cell0.e1"][OP_NAMES.index("zero")] = 0.4
    rows["cell0.e1"][OP_NAMES.index("dil_conv_5x5")] = 0.2  # best after zero
    cell = derive(rows, [False]).cells[0]
    e1 = cell.edges[0]
    assert (e1.op, e1.restored, e1.cut) == ("dil_conv_5x5", True, False)
    assert [e.restored for e in cell.edges[1:]] == [False, False]
    assert cell.unreachable_nodes() == []


def test_zero_winning_both_edges_into_z2_restores_the_one_with_the_stronger_nonzero_op():
    rows = alphas_for([("skip", "zero", "zero")])
    rows["cell0.e2b"] = [0.5 if n == "zero" else 0.02 for n in OP_NAMES]
    rows["cell0.e2b"][OP_NAMES.index("max_pool_3x3")] = 0.3  # beats e2a's runner-up (0.056)
    genotype = derive(rows, [True])
    cell = genotype.cells[0]
    assert [(e.op, e.restored) for e in cell.edges] == [
        ("skip", False), ("zero", False), ("max_pool_3x3", True),
    ]  # fmt: skip
    assert genotype.restored == ["cell0.e2b"] and genotype.near_ties == []
    text = render(genotype)
    assert "z1 -> z2: max_pool_3x3 [Pm]" in text and "RESTORED" in text
    assert "1 edge(s) restored" in text
    assert Genotype.from_json(genotype.to_json()) == genotype  # `restored` round-trips


def test_a_single_cut_edge_into_z2_stays_cut():
    genotype = derive(alphas_for([("se", "zero", "dw_sep_5x5"), ("skip", "conv_1x1", "zero")]),
                      [False, True])  # fmt: skip
    assert [e.cut for c in genotype.cells for e in c.edges] == [False, True, False] + [
        False, False, True,
    ]  # fmt: skip
    assert genotype.restored == []


@pytest.mark.parametrize(
    ("ops", "dead"),
    [(("zero", "skip", "se"), "z1"), (("skip", "zero", "zero"), "z2"),
     (("zero", "zero", "se"), "z1, z2")],
)  # fmt: skip
def test_a_hand_written_genotype_with_a_node_cut_from_the_input_is_refused(ops, dead, tmp_path):
    edges = {e: {"op": op} for e, op in zip(("e1", "e2a", "e2b"), ops, strict=True)}
    path = tmp_path / "dead.json"
    cells = [{"index": 0, "reduction": False, "edges": edges}]
    path.write_text(json.dumps({"format": "bionas.genotype/1", "cells": cells}))
    with pytest.raises(BionasError, match=rf"dead\.json: cell 0: node\(s\) {dead} cut"):
        load_genotype(path)
    assert Genotype.load(path).cells[0].unreachable_nodes()  # a trained run still loads


def test_a_restored_edge_whose_nonzero_ops_are_even_is_a_near_tie():
    rows = alphas_for([("zero", "skip", "se")])
    rows["cell0.e1"] = [0.5 if n == "zero" else 0.5 / (K - 1) for n in OP_NAMES]
    genotype = derive(rows, [False])
    e1 = genotype.cells[0].edges[0]
    assert e1.restored and e1.runner_up[0] != "zero" and e1.near_tie
    assert genotype.near_ties == ["cell0.e1"]
