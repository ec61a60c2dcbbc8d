"""The derived architecture as data: one op per edge, chosen by argmax α (Sec. III-B.2).

A `Genotype` round-trips JSON, so a searched (or hand-written) architecture can be saved,
inspected, and rebuilt as a fixed network by `BioAutoMLNAS` (`ModelConfig.genotype`).
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

    @property
    def cut(self) -> bool:
        """True when the zero op won: the edge contributes nothing."""
        return self.op == ZERO

    @property
    def alpha(self) -> float:
        return self.alphas[OP_NAMES.index(self.op)]

    @property
    def runner_up(self) -> tuple[str, float]:
        """The op with the largest α after the kept one, and that α."""
        kept = OP_NAMES.index(self.op)
        best = max((k for k in range(len(OP_NAMES)) if k != kept), key=lambda k: self.alphas[k])
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

    def to_json(self) -> str:
        cells = [
            {
                "index": c.index,
                "reduction": c.reduction,
                "edges": {
                    e.edge: {"op": e.op, "alphas": dict(zip(OP_NAMES, e.alphas, strict=True))}
                    for e in c.edges
                },
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
        edges.append(EdgeChoice(edge=name, op=op, alphas=alphas))
    return CellGenotype(index=index, reduction=bool(cell["reduction"]), edges=tuple(edges))


def edge_key(cell: int, edge: str) -> str:
    """The name of an edge in `BioAutoMLNAS.alphas()`, e.g. `cell0.e2a`."""
    return f"cell{cell}.{edge}"


def derive(alphas: Mapping[str, Sequence[float]], reduction_flags: Sequence[bool]) -> Genotype:
    """Argmax over all ten ops (zero included) per edge; a zero win marks the edge cut.

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
            best = max(range(len(row)), key=lambda k, row=row: (row[k], -k))
            edges.append(EdgeChoice(edge=name, op=OP_NAMES[best], alphas=row))
        cells.append(CellGenotype(index=i, reduction=bool(reduction), edges=tuple(edges)))
    return Genotype(cells=tuple(cells))


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
            lines.append(f"  {src} -> {dst}: {what}; next {next_op} {next_alpha:.3f}{tie})")
    ties = genotype.near_ties
    if ties:
        edges = sum(len(c.edges) for c in genotype.cells)
        lines.append(
            f"{len(ties)} of {edges} edges are near ties (the kept op's α is less than "
            f"{NEAR_TIE - 1:.0%} above the next op's; an even share is {1 / len(OP_NAMES):.3f}): "
            "the search has not decided them and the op kept there is close to arbitrary. "
            "Search longer or with a higher --lr-theta."
        )
    return "\n".join(lines) + "\n"
