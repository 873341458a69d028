"""Files that ship inside the package: the dataset and the bundled model."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

BUNDLED_PACKAGE = "synnav_cli.bundled"


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


def bundled_model_path() -> Path | None:
    root = _bundled_dir()
    path = root / "model" if root else None
    return path if path is not None and (path / "synnav-model.json").is_file() else None
