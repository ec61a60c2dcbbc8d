"""Derive the searched architecture of a run: argmax α per edge, saved as a genotype."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bionas.errors import BionasError
from bionas.trainer.genotype import Genotype, render

GENOTYPE_JSON = "genotype.json"
GENOTYPE_TXT = "genotype.txt"


@dataclass(frozen=True)
class Derived:
    genotype: Genotype
    text: str  # the readable rendering of every cell
    searched: bool  # False when the run trained a fixed network
    json_path: Path
    text_path: Path

    @property
    def cut_edges(self) -> list[str]:
        return [f"cell {c.index} {e.edge}" for c in self.genotype.cells for e in c.edges if e.cut]


def derive_run(run_dir: Path) -> Derived:
    """Write RUN_DIR/genotype.json and genotype.txt from the run's final θ."""
    from bionas.trainer.run import load_trained

    run = load_trained(run_dir, map_location="cpu")
    if run.model_config.backbone is not None:
        raise BionasError(
            f"{run_dir} trained the backbone {run.model_config.backbone}: there is no searched "
            f"architecture to derive; evaluate it as it is (`bionas evaluate {run_dir}`)"
        )
    genotype = run.model.genotype()
    text = render(genotype)
    json_path, text_path = run_dir / GENOTYPE_JSON, run_dir / GENOTYPE_TXT
    genotype.save(json_path)
    text_path.write_text(text, encoding="utf-8")
    searched = getattr(run.model, "theta", None) is not None
    return Derived(genotype, text, searched, json_path, text_path)
