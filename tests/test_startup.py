"""`synnav --help` and `--version` answer at once: the CLI imports torch (2-3 s of a 2-core
machine's time, more under load) only for the commands that run a model."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "importlib.metadata")
PROBE = """
import json, sys
from synnav_cli.cli.main import cli
try:
    cli(sys.argv[1:], prog_name="synnav")
except SystemExit:
    pass
print(json.dumps([name for name in {heavy} if name in sys.modules]), file=sys.stderr)
"""


def _imported(*args: str) -> tuple[str, list[str]]:
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
                            capture_output=True, text=True, timeout=120, check=False)
    return result.stdout, json.loads(result.stderr.strip().splitlines()[-1])


def test_help_and_version_import_no_torch():
    for args in (["--help"], ["predict", "--help"], ["embed", "--help"], ["train", "--help"],
                 ["cache", "--help"], ["models", "--help"]):
        stdout, heavy = _imported(*args)
        assert "Usage: synnav" in stdout and not heavy, (args, heavy)
    stdout, heavy = _imported("--version")
    assert stdout.startswith("synnav, version ") and "torch" not in heavy and "numpy" not in heavy


def test_the_cli_precisions_are_the_runtimes():
    from synnav_cli.cli.options import PRECISIONS
    from synnav_cli.runtime import hardware

    assert PRECISIONS == hardware.PRECISIONS


def test_the_version_is_there_for_those_who_import_it():
    from importlib.metadata import version

    import synnav_cli
    from synnav_cli import __version__

    assert __version__ == synnav_cli.__version__ == version("synnav")
