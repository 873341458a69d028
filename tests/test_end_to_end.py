"""Train, evaluate and predict through the CLI with the tiny backbone, as a user would."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from checks import one_error_line
from click.testing import CliRunner

from synnav_cli.cli.main import cli
from synnav_cli.data.dataset import assign_splits, read_dataset


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One model shared by the tests that only read it."""
    small_dataset = Path(__file__).parent / "data" / "small.json"
    out = tmp_path_factory.mktemp("trained") / "model"
    result = CliRunner().invoke(cli, ["train", "--backbone", "tiny", "--data", str(small_dataset), "--out", str(out),
                                 "--epochs", "2", "--batch-size", "16", "--lr", "3e-3"])
    assert result.exit_code == 0, result.output
    return out


def test_train_writes_a_self_describing_model(trained, small_dataset):
    meta = json.loads((trained / "synnav-model.json").read_text())
    dataset = read_dataset(small_dataset)
    assert (trained / "model.safetensors").stat().st_size > 0
    assert meta["backbone"] == "tiny"
    assert meta["labels"] == dataset.label_names
    assert set(meta["thresholds"]) == set(dataset.label_names)
    assert all(0.0 <= t <= 1.0 for t in meta["thresholds"].values())
    assert set(meta["metrics"]) == {"train", "dev", "test"}
    assert meta["config"]["epochs"] == 2 and meta["config"]["learning_rate"] == 3e-3
    assert meta["data"]["sha256"] == dataset.content_hash()
    assert len(meta["data"]["split_sha256"]) == 64
    assert sum(meta["data"]["proteins"].values()) == len(dataset)
    assert {"synnav", "torch", "python"} <= set(meta["versions"])
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert 1 <= meta["best_epoch"] <= 2
    assert not trained.with_name(trained.name + ".partial").exists()


def test_existing_model_is_not_overwritten(runner, trained, small_dataset):
    before = (trained / "model.safetensors").read_bytes()
    result = runner.invoke(cli, ["train", "--backbone", "tiny", "--data", str(small_dataset), "--out", str(trained),
                                 "--epochs", "1"])
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert (trained / "model.safetensors").read_bytes() == before


def test_evaluate_json_shape_and_ranges(runner, trained, small_dataset):
    result = runner.invoke(cli, ["evaluate", "--model", str(trained), "--data", str(small_dataset),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # progress, if any, is on stderr
    dataset = read_dataset(small_dataset)
    assert list(report["labels"]) == [n.replace(" ", "_") for n in dataset.label_names]  # as predict's columns
    for metrics in report["labels"].values():
        assert {"f1", "roc_auc", "pr_auc", "mcc", "support"} <= set(metrics)
        for key in ("f1", "roc_auc", "pr_auc"):
            assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0
        assert metrics["mcc"] is None or -1.0 <= metrics["mcc"] <= 1.0
    assert report["mean"]["roc_auc"] is not None and 0.0 <= report["mean"]["roc_auc"] <= 1.0
    meta = json.loads((trained / "synnav-model.json").read_text())
    assert report["proteins"] == meta["data"]["proteins"]["test"]


def test_evaluate_table_and_tsv(runner, trained, small_dataset):
    table = runner.invoke(cli, ["evaluate", "-m", str(trained), "-d", str(small_dataset)])
    assert table.exit_code == 0 and "roc_auc" in table.output and "mean" in table.output
    tsv = runner.invoke(cli, ["evaluate", "-m", str(trained), "-d", str(small_dataset), "--format", "tsv"])
    rows = list(csv.reader(io.StringIO(tsv.stdout), delimiter="\t"))
    assert rows[0][0] == "label" and rows[-1][0] == "mean"


def fasta_of(dataset_path, n):
    data = read_dataset(dataset_path)
    return data.entries[:n], "".join(f">{e} some description\n{s}\n" for e, s in zip(data.entries[:n], data.sequences[:n]))


def test_predict_rows_in_input_order(runner, trained, small_dataset, tmp_path):
    ids, text = fasta_of(small_dataset, 25)
    path = tmp_path / "in.fasta"
    path.write_text(text)
    result = runner.invoke(cli, ["predict", "--model", str(trained), str(path)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
    assert [r["id"] for r in rows] == ids
    labels = [n.replace(" ", "_") for n in json.loads((trained / "synnav-model.json").read_text())["labels"]]
    for row in rows:
        for label in labels:
            assert 0.0 <= float(row[label]) <= 1.0
        assert set(filter(None, row["predicted"].split(";"))) <= set(labels)
        assert row["status"] == "ok"


def test_predict_from_stdin_as_jsonl_and_thresholds(runner, trained, small_dataset):
    ids, text = fasta_of(small_dataset, 5)
    result = runner.invoke(cli, ["predict", "-m", str(trained), "-", "--format", "jsonl", "--threshold", "0"],
                           input=text)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ids
    # A threshold of 0 predicts every label.
    assert all(len(r["predicted"]) == len(r["probabilities"]) for r in rows)
    one = runner.invoke(cli, ["predict", "-m", str(trained), "-", "--threshold", "1", "--threshold", "nucleus=0"],
                        input=text)
    rows = list(csv.DictReader(io.StringIO(one.stdout), delimiter="\t"))
    assert all(r["predicted"] == "nucleus" for r in rows)


def test_a_new_model_is_not_the_default_until_chosen(runner, trained, small_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("SYNNAV_DATA_DIR", str(tmp_path / "home"))
    result = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--epochs", "1"])
    assert result.exit_code == 0, result.output
    model_dir = Path(result.stdout.strip())
    assert str(model_dir).startswith(str(tmp_path / "home" / "models"))
    _ids, text = fasta_of(small_dataset, 2)
    predicted = runner.invoke(cli, ["predict", "-"], input=text)
    assert predicted.exit_code == 0 and "Using the bundled model" in predicted.stderr

    chosen = runner.invoke(cli, ["models", "default", model_dir.name])
    assert chosen.exit_code == 0 and model_dir.name in chosen.stderr
    predicted = runner.invoke(cli, ["predict", "-"], input=text)
    assert predicted.exit_code == 0, predicted.output
    assert f"Using the default model {model_dir.name}" in predicted.stderr
    listed = json.loads(runner.invoke(cli, ["models", "list", "--json"]).stdout)
    assert [(m["name"], m["default"]) for m in listed] == [(model_dir.name, True), ("bundled", False)]
    assert runner.invoke(cli, ["models", "default"]).stdout.startswith(model_dir.name + "\t")

    assert runner.invoke(cli, ["models", "default", "--clear"]).exit_code == 0
    assert "Using the bundled model" in runner.invoke(cli, ["predict", "-"], input=text).stderr
    runner.invoke(cli, ["models", "default", model_dir.name])
    import shutil

    shutil.rmtree(model_dir)
    gone = runner.invoke(cli, ["predict", "-"], input=text)
    assert gone.exit_code == 1 and "no longer exists" in gone.stderr


def test_a_model_whose_backbone_is_not_installed_names_the_plugin_it_needs(runner, tmp_path):
    import launch

    model_dir = launch.tiny_model_dir(tmp_path / "m")
    meta = json.loads((model_dir / "synnav-model.json").read_text())
    meta["backbone"] = "example"
    (model_dir / "synnav-model.json").write_text(json.dumps(meta))
    result = runner.invoke(cli, ["predict", "-", "--model", str(model_dir)], input=">a\nMKVLAAGIVGLLLAAQPAMA\n")
    assert result.exit_code == 1
    assert "needs backbone 'example'" in result.stderr and "plugin" in result.stderr


def test_long_proteins_follow_the_policy(runner, trained, tmp_path):
    long_protein = "MKV" * 250  # 750 residues; the tiny backbone takes 512
    text = f">short\nMKVLAAGG\n>long\n{long_protein}\n"
    statuses = {}
    for policy in ("truncate", "window", "skip"):
        result = runner.invoke(cli, ["predict", "-m", str(trained), "-", "--long", policy], input=text)
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
        assert [r["id"] for r in rows] == ["short", "long"]
        assert rows[1]["length"] == "750"
        statuses[policy] = rows[1]["status"]
        if policy == "skip":
            assert rows[1]["cytosol"] == ""
    assert statuses == {"truncate": "truncated", "window": "windowed:2", "skip": "skipped"}


@pytest.mark.parametrize(
    "args, text, message",
    [
        (["predict", "-"], "", "empty"),
        (["predict", "-"], "hello\n", "not FASTA"),
        (["predict", "-"], ">a\nMK1\n", "amino-acid"),
        (["predict", "missing.fasta"], None, "not found"),
        (["predict", "-", "--threshold", "2"], ">a\nMK\n", "between 0 and 1"),
        (["predict", "-", "--threshold", "golgi=0.2"], ">a\nMK\n", "unknown label"),
    ],
)
def test_predict_user_errors_are_one_line(runner, trained, args, text, message):
    result = runner.invoke(cli, [*args, "--model", str(trained)], input=text)
    assert result.exit_code == 1
    assert result.stdout == ""
    one_error_line(result, message)
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_model_is_a_user_error(runner, tmp_path):
    result = runner.invoke(cli, ["predict", "-", "--model", str(tmp_path / "nothing")], input=">a\nMK\n")
    assert result.exit_code == 1 and "no model" in result.stderr


def test_config_file_takes_origin_keys(runner, small_dataset, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"batch_size": 4, "learning_rate": 2e-3, "epochs": 1, "precision": "fp16",
                                  "loss": "A2", "max_length": 250, "unused_key": 1}))
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--config", str(config),
                                 "--out", str(out), "--batch-size", "6"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "synnav-model.json").read_text())
    assert meta["config"]["batch_size"] == 6  # the command line wins over the file
    assert meta["config"]["learning_rate"] == 2e-3
    assert meta["config"]["precision"] == "fp16" and meta["trained_on"]["precision"] == "fp32"
    assert meta["config"]["loss"] == "a2" and meta["config"]["max_length"] == 250
    assert "unused_key" in result.stderr


def test_freeze_trains_the_head_only(runner, small_dataset, tmp_path):
    out = tmp_path / "frozen"
    result = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--out", str(out), "--freeze",
                                 "--epochs", "1"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "synnav-model.json").read_text())
    assert meta["encoder_frozen"] is True
    from safetensors.torch import load_file
    assert all(k.startswith("head.") for k in load_file(str(out / "model.safetensors")))
    predicted = runner.invoke(cli, ["predict", "-m", str(out), "-"], input=">a\nMKVLA\n")
    assert predicted.exit_code == 0 and predicted.stdout.count("\n") == 2


def test_train_pos_weights_come_from_the_training_split(runner, small_dataset, tmp_path):
    from synnav_cli.model import positive_weights
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 0
    meta = json.loads((out / "synnav-model.json").read_text())
    data = assign_splits(read_dataset(small_dataset), seed=0)
    train_only = positive_weights(data.subset("train").labels, data.label_names, "a2")
    for name, weight in zip(data.label_names, train_only):
        assert math.isclose(meta["pos_weight"][name], float(weight), rel_tol=1e-3)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda meta: meta.update(backbone_fingerprint="tiny+other"), "trained on backbone variant 'tiny+other'"),
        # Two labels in the metadata, six rows in the head (the calibration dropped with the rest).
        (lambda meta: meta.update(labels=meta["labels"][:2], thresholds=dict(list(meta["thresholds"].items())[:2]),
                                  calibration=None),
         "does not fit backbone tiny"),
    ],
    ids=["other-variant", "wrong-shape"],
)
def test_a_model_that_does_not_fit_its_backbone_is_one_line(runner, trained, tmp_path, edit, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((trained / "model.safetensors").read_bytes())
    meta = json.loads((trained / "synnav-model.json").read_text())
    edit(meta)
    (broken / "synnav-model.json").write_text(json.dumps(meta))
    result = runner.invoke(cli, ["predict", "-m", str(broken), "-"], input=">a\nMKV\n")
    one_error_line(result, message)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_missing_fasta_is_the_only_message_with_the_default_model(runner, tmp_path):
    result = runner.invoke(cli, ["predict", str(tmp_path / "missing.fasta")])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: file not found: {tmp_path / 'missing.fasta'}"]
