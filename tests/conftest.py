from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from tiny_backbone import TinyPlugin

from synnav_cli import console
from synnav_cli.plugins import load_plugins, pm

DATA = Path(__file__).parent / "data"

# Installed third-party plugins stay out of the tests: only the built-ins and the test plugins load.
os.environ["SYNNAV_LOAD_PLUGINS"] = "tiny-test-plugin"


@pytest.fixture(autouse=True)
def isolated_user_dirs(tmp_path, monkeypatch):
    """Every test gets its own cache and model directories and no network."""
    monkeypatch.setenv("SYNNAV_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SYNNAV_DATA_DIR", str(tmp_path / "userdata"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SYNNAV_OFFLINE", raising=False)
    # --quiet/--verbose set a module-level level; one invocation must not silence the next.
    console.set_verbosity()


@pytest.fixture(autouse=True, scope="session")
def tiny_plugin():
    load_plugins()
    plugin = TinyPlugin()
    pm.register(plugin, name="tiny-test-plugin")
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


@pytest.fixture
def small_dataset() -> Path:
    return DATA / "small.json"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def write_dataset(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records))
    return path
