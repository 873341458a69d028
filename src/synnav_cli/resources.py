"""Files that ship inside the package: the dataset, the source-shift set and the bundled model;
how to install the optional extras."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_PACKAGE = "synnav_cli.bundled"

# The optional extras of pyproject.toml and what each installs.
EXTRAS = {
    "plots": "matplotlib>=3.7",
    "hdf5": "h5py>=3.8",
    "parquet": "pyarrow>=15",
    "pandas": "pandas>=2.2",
}


def install_hint(extra: str) -> str:
    """How to install ``extra``. synnav is installed from its repository until a release, so
    ``pip install 'synnav[extra]'`` would find nothing: the hint names the repository's form and
    the package itself."""
    return f'`pip install ".[{extra}]"` in the synnav repository, or `pip install "{EXTRAS[extra]}"`'


def _bundled_dir() -> Path | None:
    try:
        return Path(str(resources.files(BUNDLED_PACKAGE)))
    except ModuleNotFoundError:
        return None


def bundled_dataset_path() -> Path | None:
    """``data/dataset.json`` as shipped (a link into the source tree, a copy in wheels)."""
    root = _bundled_dir()
    path = root / "dataset.json" if root else None
    return path if path is not None and path.is_file() else None


def bundled_shift_path() -> Path | None:
    """``data/shift.json`` as shipped (a link into the source tree, a copy in wheels): dev and test
    proteins whose compartment labels come from GO or OpenCell rather than HOU, for checking a
    model on another labelling source (see data/README.md)."""
    root = _bundled_dir()
    path = root / "shift.json" if root else None
    return path if path is not None and path.is_file() else None


def bundled_model_path() -> Path | None:
    root = _bundled_dir()
    path = root / "model" if root else None
    return path if path is not None and (path / "synnav-model.json").is_file() else None
