"""Every option is checked before a model loads or data is read: a bad value is one line and a
non-zero exit, never a silent change and never a failure after the work is done."""

from __future__ import annotations

import json
from pathlib import Path

import launch
import pytest

from synnav_cli.cli.main import cli

DATA = Path(__file__).parent / "data"


@pytest.fixture
def guarded(tmp_path, monkeypatch):
    """A tiny model whose loading, and a dataset whose reading, fail the test: no check may come
    after them. Returns what the commands need."""
    import synnav_cli.scoring.load
    import synnav_cli.train.run

    model = launch.tiny_model_dir(tmp_path / "model")

    def too_late(*args, **kwargs):
        raise AssertionError("the model loaded (or the data was read) before the options were checked")

    monkeypatch.setattr(synnav_cli.scoring.load, "load_model", too_late)
    monkeypatch.setattr(synnav_cli.train.run, "read_dataset", too_late)
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3, lengths=(20, 40))
    data = tmp_path / "data.json"
    data.write_text(json.dumps(json.loads((DATA / "small.json").read_text())[:20]))
    return {"model": str(model), "fasta": str(fasta), "data": str(data), "tmp": tmp_path}


def _args(case: list[str], paths: dict) -> list[str]:
    return [part.format(**paths) for part in case]


PREDICT = ["predict", "{fasta}", "--model", "{model}", "--device", "cpu"]
EMBED = ["embed", "{fasta}", "--model", "{model}", "--device", "cpu", "-o", "{tmp}/e.npz"]
EVALUATE = ["evaluate", "--model", "{model}", "--data", "{data}", "--device", "cpu"]
TRAIN = ["train", "-b", "tiny", "--data", "{data}", "--device", "cpu", "-o", "{tmp}/trained"]


@pytest.mark.parametrize(
    "case, option",
    [
        (PREDICT + ["--max-tokens", "0"], "--max-tokens"),
        (PREDICT + ["--max-tokens", "-5"], "--max-tokens"),
        (PREDICT + ["--explain", "{tmp}/explained", "--explain-steps", "0", "-o", "{tmp}/p.tsv"],
         "--explain-steps"),
        (EMBED + ["--max-tokens", "0"], "--max-tokens"),
        (EVALUATE + ["--max-tokens", "-5"], "--max-tokens"),
        (TRAIN + ["--max-tokens", "0"], "--max-tokens"),
        (TRAIN + ["--epochs", "0"], "--epochs"),
        (TRAIN + ["--batch-size", "0"], "--batch-size"),
        (TRAIN + ["--max-length", "0"], "--max-length"),
        (TRAIN + ["--lr", "0"], "--lr"),
    ],
)
def test_a_bad_number_is_refused_before_anything_runs(runner, guarded, case, option):
    result = runner.invoke(cli, _args(case, guarded))
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: ") and option in last, result.stderr
    assert not list(guarded["tmp"].glob("p.tsv*")) and not (guarded["tmp"] / "explained").exists()


@pytest.mark.parametrize(
    "case",
    [
        PREDICT + ["-o", "{tmp}/missing/dir/p.tsv"],
        PREDICT + ["--compare", "-o", "{tmp}/missing/dir/p.tsv"],
        EMBED[:-1] + ["{tmp}/missing/dir/e.npz"],
        TRAIN[:-1] + ["{tmp}/missing/dir/trained"],
    ],
    ids=["predict", "compare", "embed", "train"],
)
def test_an_output_in_a_missing_folder_is_refused_not_created(runner, guarded, case):
    result = runner.invoke(cli, _args(case, guarded))
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing/dir" in lines[0] and "does not exist" in lines[0], result.stderr
    assert not (guarded["tmp"] / "missing").exists()


def test_a_budget_under_one_protein_says_what_it_uses(runner, tmp_path):
    model = launch.tiny_model_dir(tmp_path / "model", max_length=40)
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3, lengths=(20, 40))
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--device", "cpu",
                                 "--max-tokens", "5"])
    assert result.exit_code == 0, result.output
    assert "--max-tokens 5 is less than one protein of the longest length (42 tokens); using 42" in result.stderr


# A mistyped model or backbone name gets a suggestion, as a mistyped command does.


@pytest.mark.parametrize(
    "args, suggested",
    [
        (["predict", "{fasta}", "--model", "bundeld"], "'bundled'"),
        (["embed", "{fasta}", "--backbone", "esmc300", "-o", "{tmp}/e.npz"], "'esmc300m'"),
        (["embed", "{fasta}", "--backbone", "ESM2_8", "-o", "{tmp}/e.npz"], "'esm2_8m'"),
        (["train", "--backbone", "tiny-tset", "--data", "{data}"], "'tiny-test'"),
        (["models", "show", "trained-mdoel"], "'trained-model'"),
    ],
)
def test_a_mistyped_name_gets_a_suggestion(runner, guarded, args, suggested):
    import shutil

    from synnav_cli import paths

    paths.models_dir().mkdir(parents=True, exist_ok=True)
    shutil.copytree(guarded["model"], paths.models_dir() / "trained-model")
    result = runner.invoke(cli, _args(args, guarded))
    assert result.exit_code == 1, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(f"Did you mean {suggested}?"), result.stderr


def test_an_unknown_model_names_the_bundled_one(runner, guarded):
    result = runner.invoke(cli, _args(["predict", "{fasta}", "--model", "nothing-like-it"], guarded))
    assert result.exit_code == 1
    assert "`bundled`" in result.stderr and "Did you mean" not in result.stderr, result.stderr
