"""A training run that fails before its first checkpoint leaves no ``.partial`` workspace behind,
unless the workspace was there before it."""

from __future__ import annotations

import json
from pathlib import Path

from synnav_cli.cli.main import cli

DATA = Path(__file__).parent / "data"


def _offline_train(runner, tmp_path: Path, out: Path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(json.loads((DATA / "small.json").read_text())[:30]))
    # No network and an empty cache: the backbone's weights cannot be fetched.
    return runner.invoke(cli, ["train", "-b", "esm2_8m", "--data", str(data), "--device", "cpu",
                               "--epochs", "1", "--offline", "-o", str(out)])


def test_a_run_that_cannot_fetch_weights_leaves_no_workspace(runner, tmp_path):
    result = _offline_train(runner, tmp_path, tmp_path / "model")
    assert result.exit_code == 1 and "cache" in result.stderr, (result.output, result.exception)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("model")]


def test_a_workspace_that_was_there_is_kept(runner, tmp_path):
    workspace = tmp_path / "model.partial"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("mine")
    result = _offline_train(runner, tmp_path, tmp_path / "model")
    assert result.exit_code == 1, (result.output, result.exception)
    assert (workspace / "notes.txt").read_text() == "mine"
