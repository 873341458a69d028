"""Where synnav keeps things on disk. One environment variable per location."""

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "SYNNAV_CACHE_DIR"
DATA_ENV = "SYNNAV_DATA_DIR"


def _from_env(name: str, default: str) -> Path:
    value = os.environ.get(name, "").strip()
    return Path(value).expanduser() if value else Path(default)


def cache_dir() -> Path:
    """Downloaded weights and embedding caches: ``$SYNNAV_CACHE_DIR`` or the platform cache dir."""
    return _from_env(CACHE_ENV, platformdirs.user_cache_dir("synnav"))


def hub_cache_dir() -> Path:
    """huggingface_hub's ``cache_dir`` inside the synnav cache (the hub's own layout below it)."""
    return cache_dir() / "hub"


def data_dir() -> Path:
    """Trained models and other user data: ``$SYNNAV_DATA_DIR`` or the platform data dir."""
    return _from_env(DATA_ENV, platformdirs.user_data_dir("synnav"))


def models_dir() -> Path:
    return data_dir() / "models"


def hub_dir() -> Path:
    """The hub-layout weights cache (``$SYNNAV_CACHE_DIR/hub``), links resolved as the hub does."""
    return hub_cache_dir().expanduser().resolve()


def repo_dir(repo_id: str) -> Path:
    """Where huggingface_hub keeps one model repository inside :func:`hub_dir`."""
    return hub_dir() / ("models--" + repo_id.replace("/", "--"))


def verified_dir() -> Path:
    """Stamps of cached weight files whose hash was checked (see ``weights.integrity``)."""
    return cache_dir().expanduser() / "verified"
