"""synnav: predict where a protein goes in a neuron with fine-tuned protein language models."""

from typing import TYPE_CHECKING

from synnav_cli.hookspecs import hookimpl

if TYPE_CHECKING:
    from synnav_cli.api import Model, load_model
    from synnav_cli.errors import SynnavError

__all__ = ["Model", "SynnavError", "__version__", "hookimpl", "load_model"]

# The Python API (docs/python.md), imported when first asked for: it imports torch, which
# `synnav --help` must not (tests/test_startup.py).
_LAZY = {
    "load_model": "synnav_cli.api",
    "Model": "synnav_cli.api",
    "SynnavError": "synnav_cli.errors",
}


def __getattr__(name: str):
    """The Python API's names, and ``__version__``, looked up when first asked for:
    importlib.metadata costs `synnav --help` a sixth of its time, and only --version and the
    files that record the version need it."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("synnav")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "__version__"})
