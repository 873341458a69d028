"""synnav: predict where a protein goes in a neuron with fine-tuned protein language models."""

from synnav_cli.hookspecs import hookimpl

__all__ = ["__version__", "hookimpl"]


def __getattr__(name: str) -> str:
    """``__version__``, looked up when first asked for: importlib.metadata costs `synnav --help`
    a sixth of its time, and only --version and the files that record the version need it."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("synnav")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
