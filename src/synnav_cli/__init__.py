"""synnav: predict where a protein goes in a neuron with fine-tuned protein language models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("synnav")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from synnav_cli.hookspecs import hookimpl  # noqa: E402 - plugins write `from synnav_cli import hookimpl`

__all__ = ["__version__", "hookimpl"]
