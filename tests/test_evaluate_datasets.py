"""`synnav evaluate` with several datasets side by side (--data twice, --shift)."""

from __future__ import annotations

import csv
import io
import json

from launch import random_dataset, tiny_model_dir

from synnav_cli.cli.main import cli


def _dataset(path, count, seed):
    return random_dataset(path, count, rate=0.3, seed=seed, split="test", prefix=f"Q{seed}")


def _table(output: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(output), delimiter="\t"))


def test_two_datasets_are_scored_side_by_side(tmp_path, runner):
    model = tiny_model_dir(tmp_path / "m")
    first = _dataset(tmp_path / "first.json", 40, seed=1)
    second = _dataset(tmp_path / "other.json", 30, seed=2)
    both = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(first), "-d", str(second),
                               "--format", "tsv"])
    assert both.exit_code == 0, both.output
    alone = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(second), "--format", "tsv"])
    assert alone.exit_code == 0, alone.output
    rows, single = _table(both.stdout), _table(alone.stdout)
    assert [r["label"] for r in rows] == [r["label"] for r in single]
    # Each dataset's columns are that dataset's own figures, under MODEL/DATASET.
    for row, own in zip(rows, single):
        assert row["m/other roc_auc"] == own["roc_auc"]
        assert row["m/other ece"] == own["ece"]
    assert "m/first roc_auc" in rows[0]
    assert [r["m/first roc_auc"] for r in rows] != [r["m/other roc_auc"] for r in rows]

    table = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(first), "-d", str(second)])
    assert table.stdout.splitlines()[0] == "test split, proteins: m/first 40, m/other 30"
    records = json.loads(
        runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(first), "-d", str(second),
                            "--format", "json"]).stdout
    )
    assert [r["data"] for r in records] == [str(first), str(second)]


def test_a_missing_dataset_fails_before_any_model_runs(tmp_path, runner):
    model = tiny_model_dir(tmp_path / "m")
    first = _dataset(tmp_path / "first.json", 10, seed=1)
    result = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(first),
                                 "-d", str(tmp_path / "nothing.json")])
    assert result.exit_code == 1
    assert f"no dataset at {tmp_path / 'nothing.json'}" in result.stderr
    assert "Traceback" not in result.output


def test_shift_adds_the_bundled_source_shift_set(tmp_path, runner):
    from synnav_cli.resources import bundled_shift_path

    model = tiny_model_dir(tmp_path / "m")
    first = _dataset(tmp_path / "first.json", 20, seed=1)
    result = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(first), "--shift",
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["data"] for r in records] == [str(first), str(bundled_shift_path())]
    assert [r["name"] for r in records] == ["m/first", "m/shift"]
    shifted = json.loads(bundled_shift_path().read_text())
    assert records[1]["proteins"] == sum(r["split"] == "test" for r in shifted)


def test_files_of_one_name_in_two_folders_get_column_groups_of_their_own(tmp_path, runner):
    model = tiny_model_dir(tmp_path / "m")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _dataset(tmp_path / "a" / "data.json", 30, seed=1)
    second = _dataset(tmp_path / "b" / "data.json", 30, seed=2)
    result = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(first), "-d", str(second),
                                 "--format", "tsv"])
    assert result.exit_code == 0, result.output
    header = _table(result.stdout)[0]
    assert "m/a/data roc_auc" in header and "m/b/data roc_auc" in header
    assert "m/data roc_auc" not in header


def test_dataset_names_are_the_shortest_that_differ(tmp_path):
    from synnav_cli.cli.evaluate import dataset_names

    assert dataset_names([tmp_path / "x" / "a" / "data.json", tmp_path / "x" / "b" / "data.json",
                          tmp_path / "shift.json"]) == ["a/data", "b/data", "shift"]
    assert dataset_names([tmp_path / "a" / "x" / "d.json", tmp_path / "b" / "x" / "d.json"]) == [
        "a/x/d", "b/x/d"]
    # Only the suffix differs: the paths, as given.
    assert dataset_names([tmp_path / "d.json", tmp_path / "d.json.gz"]) == [
        str(tmp_path / "d.json"), str(tmp_path / "d.json.gz")]


def test_the_same_dataset_twice_is_refused(tmp_path, runner):
    model = tiny_model_dir(tmp_path / "m")
    data = _dataset(tmp_path / "data.json", 10, seed=1)
    result = runner.invoke(cli, ["evaluate", "-m", str(model), "-d", str(data), "-d",
                                 str(tmp_path / "." / "data.json")])
    assert result.exit_code == 1
    assert "is given twice" in result.stderr and "Traceback" not in result.output
