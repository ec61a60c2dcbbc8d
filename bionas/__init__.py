"""bionas: BIOSCAN-5M -> verified WebDataset shards, and BioAutoML-NAS training on them.

The subpackages live beside this folder in the source tree (`ingest/`, `shards/`,
`manifests/`, `trainer/`; pyproject.toml maps them to `bionas.*`). Where this folder is
imported straight from a checkout, e.g. `python -m bionas` in the repository root, which
puts the root ahead of an installed copy, they are found there too.
"""

from pathlib import Path

__version__ = "0.1.0"

_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "ingest" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))  # noqa: F821 (a package's __path__)
