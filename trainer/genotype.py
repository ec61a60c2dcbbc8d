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
            alpha = e.alphas[OP_NAMES.index(e.op)]
            what = f"{e.op} [{SYMBOLS[e.op]}] (α={alpha:.3f})"
            if e.cut:
                what = f"edge cut (zero won, α={alpha:.3f})"
            lines.append(f"  {src} -> {dst}: {what}")
    return "\n".join(lines) + "\n"
