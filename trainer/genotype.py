"""The derived architecture as data: one op per edge, chosen by argmax α (Sec. III-B.2).

A `Genotype` round-trips JSON, so a searched (or hand-written) architecture can be saved,
inspected, and rebuilt as a fixed network by `BioAutoMLNAS` (`ModelConfig.genotype`).

A derived cell is never dead: where the zero op wins an edge that a node needs to be
reachable from the cell's input x (e1 for z1; e2a or e2b for z2), `derive` keeps that
edge's best non-zero op instead and marks the edge `restored`. Otherwise a short search
whose zero op drifts ahead could emit a cell whose output ignores its input. A loaded
genotype with an unreachable node is refused for training (`check_reachable`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bionas.trainer.ops import OP_NAMES, SYMBOLS, ZERO

FORMAT = "bionas.genotype/1"
# Edge name -> (source node, target node): eqs. (7)-(8).
EDGES: dict[str, tuple[str, str]] = {"e1": ("x", "z1"), "e2a": ("x", "z2"), "e2b": ("z1", "z2")}
EDGE_NAMES: tuple[str, ...] = tuple(EDGES)
# An edge is undecided when its kept op's α is less than this factor above the next op's:
# the search has not separated them, and the choice there is close to arbitrary.
NEAR_TIE = 1.10


@dataclass(frozen=True)
class EdgeChoice:
    """The op kept on one edge and the α of every candidate op (in `OP_NAMES` order)."""

    edge: str
    op: str
    alphas: tuple[float, ...]
    restored: bool = False  # zero won, but the edge keeps its best non-zero op (see above)

    @property
    def cut(self) -> bool:
        """True when the zero op won: the edge contributes nothing."""
        return self.op == ZERO

    @property
    def alpha(self) -> float:
        return self.alphas[OP_NAMES.index(self.op)]

    @property
    def runner_up(self) -> tuple[str, float]:
        """The op with the largest α after the kept one (after zero too, on a restored
        edge: the kept op was chosen among the non-zero ones), and that α."""
        skip = {OP_NAMES.index(self.op)} | ({OP_NAMES.index(ZERO)} if self.restored else set())
        best = max((k for k in range(len(OP_NAMES)) if k not in skip), key=lambda k: self.alphas[k])
        return OP_NAMES[best], self.alphas[best]

    @property
    def near_tie(self) -> bool:
        """The kept op's α is within NEAR_TIE of the runner-up's (a one-hot row never is)."""
        return self.alpha < NEAR_TIE * self.runner_up[1]


@dataclass(frozen=True)
class CellGenotype:
    """One cell of a derived architecture: its position, kind, and the choice per edge."""

    index: int
    reduction: bool
    edges: tuple[EdgeChoice, ...]  # in EDGE_NAMES order

    def op(self, edge: str) -> str:
        return self.edges[EDGE_NAMES.index(edge)].op

    def unreachable_nodes(self) -> list[str]:
        """Nodes with no path from x: z1 when e1 is zero; z2 when neither e2a nor
        (e2b from a reachable z1) carries anything."""
        z1 = self.op("e1") != ZERO
        z2 = self.op("e2a") != ZERO or (z1 and self.op("e2b") != ZERO)
        return [node for node, alive in (("z1", z1), ("z2", z2)) if not alive]


@dataclass(frozen=True)
class Genotype:
    """A derived (or hand-written) architecture: one `CellGenotype` per cell, in order."""

    cells: tuple[CellGenotype, ...]

    @property
    def reduction_flags(self) -> tuple[bool, ...]:
        return tuple(c.reduction for c in self.cells)

    @property
    def near_ties(self) -> list[str]:
        """The edges the search has not decided (`EdgeChoice.near_tie`), as `cellI.EDGE`."""
        return [edge_key(c.index, e.edge) for c in self.cells for e in c.edges if e.near_tie]

    @property
    def restored(self) -> list[str]:
        """The edges `derive` restored (zero won there), as `cellI.EDGE`."""
        return [edge_key(c.index, e.edge) for c in self.cells for e in c.edges if e.restored]

    def to_json(self) -> str:
        cells = [
            {
                "index": c.index,
                "reduction": c.reduction,
                "edges": {e.edge: _edge_to_dict(e) for e in c.edges},
            }
            for c in self.cells
        ]
        return json.dumps({"format": FORMAT, "cells": cells}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        """Parse and validate; raises ValueError naming the cell/edge/op that is wrong."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a genotype: expected 'format': {FORMAT!r}")
        try:
            cells = tuple(_cell_from_dict(i, c) for i, c in enumerate(data.get("cells", [])))
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"malformed genotype cell: {err!r}") from err
        if not cells:
            raise ValueError("genotype has no cells")
        return cls(cells=cells)

    def check_reachable(self) -> None:
        """Raise ValueError naming the first cell with a node cut from its input (checked
        where a genotype is about to be trained, not where a trained run is loaded: an
        older bionas could derive such cells, and their runs must still load)."""
        for cell in self.cells:
            dead = cell.unreachable_nodes()
            if dead:
                raise ValueError(
                    f"cell {cell.index}: node(s) {', '.join(dead)} cut from the cell's input "
                    "(zero on e1 cuts z1; zero on e2a, and on e2b or e1, cuts z2): give one "
                    "of those edges a non-zero op"
                )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        try:
            return cls.from_json(Path(path).read_text(encoding="utf-8"))
        except ValueError as err:  # includes json.JSONDecodeError
            raise ValueError(f"{path}: {err}") from err


def _cell_from_dict(position: int, cell: dict) -> CellGenotype:
    index = int(cell.get("index", position))
    if index != position:
        raise ValueError(f"cell at position {position} has index {index}")
    edges_in = cell["edges"]
    if set(edges_in) != set(EDGE_NAMES):
        raise ValueError(f"cell {index}: edges must be {list(EDGE_NAMES)}, got {list(edges_in)}")
    edges = []
    for name in EDGE_NAMES:
        op = edges_in[name]["op"]
        if op not in OP_NAMES:
            raise ValueError(f"cell {index} edge {name}: unknown op {op!r}; known: {OP_NAMES}")
        given = edges_in[name].get("alphas", {})
        alphas = tuple(float(given.get(k, 1.0 if k == op else 0.0)) for k in OP_NAMES)
        restored = bool(edges_in[name].get("restored", False))
        edges.append(EdgeChoice(edge=name, op=op, alphas=alphas, restored=restored))
    return CellGenotype(index=index, reduction=bool(cell["reduction"]), edges=tuple(edges))


def _edge_to_dict(e: EdgeChoice) -> dict:
    body: dict = {"op": e.op, "alphas": dict(zip(OP_NAMES, e.alphas, strict=True))}
    if e.restored:
        body["restored"] = True
    return body


# Built-in hand-designed cells, for `--genotype NAME` and as baselines of the search.
# `manual` is the paper's E012 ("No NAS (Fixed)", Table I; the paper does not show its
# cell): ours is a ResNet basic block in the cell's form, z1 = D3(x), z2 = SK(x) + D3(z1):
# two stacked depthwise-separable 3x3 convs (receptive field 5) with an identity shortcut
# (a factorized reduce in reduction cells). `pool_skip` is the worst plausible cell: no
# learned spatial filter at all, z1 = Pm(x), z2 = SK(x) + Pa(z1).
BUILTIN_CELLS: dict[str, dict[str, str]] = {
    "manual": {"e1": "dw_sep_3x3", "e2a": "skip", "e2b": "dw_sep_3x3"},
    "pool_skip": {"e1": "max_pool_3x3", "e2a": "skip", "e2b": "avg_pool_3x3"},
}


def uniform_genotype(ops: Mapping[str, str], reduction_flags: Sequence[bool]) -> Genotype:
    """Every cell with the same op per edge (`ops`: edge name -> op), one-hot α."""
    cells = tuple(
        CellGenotype(
            index=i,
            reduction=bool(reduction),
            edges=tuple(
                EdgeChoice(name, ops[name], tuple(float(k == ops[name]) for k in OP_NAMES))
                for name in EDGE_NAMES
            ),
        )
        for i, reduction in enumerate(reduction_flags)
    )
    return Genotype(cells=cells)


def architecture_of(genotype: Genotype | None) -> list[list[object]] | None:
    """What decides a fixed network's layers: per cell, the reduction flag and the op of
    each edge (α and the `restored` marks left out); None for the supernet."""
    if genotype is None:
        return None
    return [[c.reduction, *(e.op for e in c.edges)] for c in genotype.cells]


def edge_key(cell: int, edge: str) -> str:
    """The name of an edge in `BioAutoMLNAS.alphas()`, e.g. `cell0.e2a`."""
    return f"cell{cell}.{edge}"


def derive(alphas: Mapping[str, Sequence[float]], reduction_flags: Sequence[bool]) -> Genotype:
    """Argmax over all ten ops (zero included) per edge; a zero win marks the edge cut,
    unless the cut would leave a node unreachable from x (then the edge is restored).

    `alphas` maps `cellI.EDGE` to the α row in `OP_NAMES` order (tensors work too);
    ties go to the op listed first.
    """
    cells = []
    for i, reduction in enumerate(reduction_flags):
        edges = []
        for name in EDGE_NAMES:
            row = tuple(float(a) for a in alphas[edge_key(i, name)])
            if len(row) != len(OP_NAMES):
                raise ValueError(
                    f"{edge_key(i, name)}: {len(row)} alphas, expected {len(OP_NAMES)}"
                )
            edges.append(EdgeChoice(edge=name, op=OP_NAMES[_argmax(row)], alphas=row))
        cell = CellGenotype(index=i, reduction=bool(reduction), edges=tuple(edges))
        cells.append(restore_paths(cell))
    return Genotype(cells=tuple(cells))


def _argmax(row: Sequence[float], skip: str | None = None) -> int:
    """Index of the largest α (ties to the first op), leaving out op `skip`."""
    ks = [k for k in range(len(row)) if OP_NAMES[k] != skip]
    return max(ks, key=lambda k: (row[k], -k))


def restore_paths(cell: CellGenotype) -> CellGenotype:
    """Restore the fewest cut edges that make z1 and z2 reachable from x: e1 if cut, then,
    if both edges into z2 are cut, the one whose best non-zero op has the larger α."""
    edges = {e.edge: e for e in cell.edges}

    def restore(name: str) -> None:
        e = edges[name]
        edges[name] = EdgeChoice(name, OP_NAMES[_argmax(e.alphas, skip=ZERO)], e.alphas, True)

    if edges["e1"].cut:
        restore("e1")
    if edges["e2a"].cut and edges["e2b"].cut:
        best = {n: max(a for k, a in enumerate(edges[n].alphas) if OP_NAMES[k] != ZERO)
                for n in ("e2a", "e2b")}  # fmt: skip
        restore("e2a" if best["e2a"] >= best["e2b"] else "e2b")
    kept = tuple(edges[name] for name in EDGE_NAMES)
    return CellGenotype(index=cell.index, reduction=cell.reduction, edges=kept)


def render(genotype: Genotype) -> str:
    """A readable text rendering, one block per cell."""
    lines = []
    for cell in genotype.cells:
        kind = "reduction" if cell.reduction else "normal"
        lines.append(f"cell {cell.index} ({kind}):")
        for e in cell.edges:
            src, dst = EDGES[e.edge]
            next_op, next_alpha = e.runner_up
            what = f"{e.op} [{SYMBOLS[e.op]}] (α={e.alpha:.3f}"
            if e.cut:
                what = f"edge cut (zero won, α={e.alpha:.3f}"
            tie = ", near tie" if e.near_tie else ""
            if e.restored:
                zero = e.alphas[OP_NAMES.index(ZERO)]
                tie += f", RESTORED: zero won with α={zero:.3f} but would cut {dst} off from x"
            lines.append(f"  {src} -> {dst}: {what}; next {next_op} {next_alpha:.3f}{tie})")
    if genotype.restored:
        lines.append(
            f"{len(genotype.restored)} edge(s) restored: the zero op won there, but cutting "
            "them would leave a node with no path from its cell's input; each keeps its best "
            "non-zero op."
        )
    ties = genotype.near_ties
    if ties:
        edges = sum(len(c.edges) for c in genotype.cells)
        alphas = genotype.cells[0].edges[0].alphas  # ops outside --ops have α = 0
        live = sum(1 for a in alphas if a > 0) or len(OP_NAMES)
        lines.append(
            f"{len(ties)} of {edges} edges are near ties (the kept op's α is less than "
            f"{NEAR_TIE - 1:.0%} above the next op's; an even share is {1 / live:.3f}): "
            "the search has not decided them and the op kept there is close to arbitrary. "
            "Search longer, or with a higher --lr-theta (or --lr-theta auto)."
        )
    return "\n".join(lines) + "\n"
