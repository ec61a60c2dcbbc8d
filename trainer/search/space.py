"""The search space as data: a path is one op per edge per cell, `((e1, e2a, e2b), ...)`.

Pure functions over paths (sample, mutate, convert to and from a `Genotype`), shared by
every shared-weight strategy. A path is reachable when every cell's nodes have a path
from its input (`CellGenotype.unreachable_nodes`): only reachable paths are sampled
uniformly and mutated into, since only they can be trained as a fixed network.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bionas.trainer.genotype import EDGE_NAMES, CellGenotype, EdgeChoice, Genotype
from bionas.trainer.ops import OP_NAMES, ZERO

Path = tuple[tuple[str, ...], ...]


def cell_reachable(ops: Sequence[str]) -> bool:
    """z1 needs e1; z2 needs e2a, or e2b from a reachable z1."""
    e1, e2a, e2b = ops
    return e1 != ZERO and (e2a != ZERO or e2b != ZERO)


def reachable(path: Path) -> bool:
    return all(cell_reachable(cell) for cell in path)


def sample_uniform(rng: random.Random, cells: int, ops: Sequence[str]) -> Path:
    """Each edge's op uniformly from `ops`, redrawn per cell until the cell is reachable:
    uniform over the reachable paths."""
    out = []
    for _ in range(cells):
        while True:
            cell = tuple(rng.choice(ops) for _ in EDGE_NAMES)
            if cell_reachable(cell):
                break
        out.append(cell)
    return tuple(out)


def mutate(path: Path, rng: random.Random, ops: Sequence[str]) -> Path:
    """The same path with exactly one edge's op replaced by another op of `ops`, drawn
    uniformly among the changes that keep the path reachable."""
    changes = [
        (i, j, op)
        for i, cell in enumerate(path)
        for j in range(len(EDGE_NAMES))
        for op in ops
        if op != cell[j] and cell_reachable(cell[:j] + (op,) + cell[j + 1 :])
    ]
    if not changes:
        raise ValueError(f"no reachable one-edge mutation of {path} within {tuple(ops)}")
    i, j, op = rng.choice(changes)
    cell = path[i][:j] + (op,) + path[i][j + 1 :]
    return path[:i] + (cell,) + path[i + 1 :]


def edges_changed(a: Path, b: Path) -> int:
    """How many edges two paths of the same shape differ on."""
    return sum(x != y for ca, cb in zip(a, b, strict=True) for x, y in zip(ca, cb, strict=True))


def to_genotype(path: Path, reduction_flags: Sequence[bool]) -> Genotype:
    """A path as a genotype with one-hot α (the op chosen, nothing else)."""
    cells = tuple(
        CellGenotype(
            index=i,
            reduction=bool(reduction),
            edges=tuple(
                EdgeChoice(edge, op, tuple(float(k == op) for k in OP_NAMES))
                for edge, op in zip(EDGE_NAMES, ops, strict=True)
            ),
        )
        for i, (ops, reduction) in enumerate(zip(path, reduction_flags, strict=True))
    )
    return Genotype(cells=cells)


def from_genotype(genotype: Genotype) -> Path:
    return tuple(tuple(e.op for e in cell.edges) for cell in genotype.cells)


def to_json(path: Path) -> list[list[str]]:
    return [list(cell) for cell in path]


def from_json(data: Sequence[Sequence[str]]) -> Path:
    return tuple(tuple(cell) for cell in data)
