"""models list/show, evaluate --plots, predict --explain and predict --compare, with the tiny backbone."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import click
import pytest
from checks import one_error_line

from synnav_cli import paths
from synnav_cli.cli.main import cli
from synnav_cli.data.dataset import column_name, read_dataset
from synnav_cli.predict.compare import pair_mutants
from synnav_cli.predict.explain import attribute, baseline_probabilities, file_stem
from synnav_cli.scoring.load import load_for_scoring
from synnav_cli.train.config import TrainConfig
from synnav_cli.train.run import train

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> Path:
    """tests/data/small.json, cut to the first 60 proteins so that training takes a second."""
    records = json.loads((DATA / "small.json").read_text())[:60]
    path = tmp_path_factory.mktemp("data") / "small60.json"
    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, dataset_path, tiny_plugin) -> Path:
    out = tmp_path_factory.mktemp("models") / "tiny-user-features"
    train(TrainConfig(backbone="tiny", epochs=2, batch_size=16, learning_rate=3e-3), dataset_path, out,
          device="cpu")
    return out


@pytest.fixture
def installed(model_dir) -> Path:
    """The trained model copied into this test's own models directory."""
    target = paths.models_dir() / model_dir.name
    shutil.copytree(model_dir, target)
    return target


def _fasta(path: Path, records: dict[str, str]) -> Path:
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in records.items()))
    return path


# synnav models


def test_models_list_json_and_table(runner, installed, dataset_path):
    result = runner.invoke(cli, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    entry, bundled = json.loads(result.output)
    assert bundled["name"] == "bundled" and bundled["default"] and not entry["default"]
    meta = json.loads((installed / "synnav-model.json").read_text())
    assert entry["name"] == installed.name
    assert entry["backbone"] == "tiny"
    assert entry["data_sha256"] == read_dataset(dataset_path).content_hash()
    assert entry["split_sha256"] == meta["data"]["split_sha256"]
    assert entry["test_mean_f1"] == meta["metrics"]["test"]["mean"]["f1"]
    assert entry["test_mean_roc_auc"] == meta["metrics"]["test"]["mean"]["roc_auc"]
    assert entry["created"] == meta["created"]

    table = runner.invoke(cli, ["models", "list"])
    assert table.exit_code == 0
    header, row, bundled_row, footer = table.output.splitlines()
    assert bundled_row.startswith("bundled *") and "default" in footer
    assert header.split()[:2] == ["name", "backbone"]
    assert row.startswith(installed.name) and entry["data_sha256"][:12] in row


def test_models_list_when_empty(runner):
    result = runner.invoke(cli, ["models", "list"])
    assert result.exit_code == 0 and result.output.splitlines()[1].startswith("bundled *")
    assert [m["name"] for m in json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)] == ["bundled"]


def test_models_show_text_and_json(runner, installed):
    meta = json.loads((installed / "synnav-model.json").read_text())
    text = runner.invoke(cli, ["models", "show", installed.name])
    assert text.exit_code == 0, text.output
    for label, threshold in meta["thresholds"].items():
        label = column_name(label)  # shown as predict's columns spell it
        assert any(line.strip().startswith(label) and f"{threshold:.3f}" in line for line in text.output.splitlines())
    assert "learning_rate: 0.003" in text.output
    assert f"torch {meta['versions']['torch']}" in text.output

    shown = json.loads(runner.invoke(cli, ["models", "show", str(installed), "--json"]).output)
    assert shown["thresholds"] == {column_name(k): v for k, v in meta["thresholds"].items()}
    assert shown["metrics"]["test"]["labels"] == {column_name(k): v for k, v in meta["metrics"]["test"]["labels"].items()}
    assert shown["config"] == meta["config"] and shown["versions"] == meta["versions"]


def test_models_show_marks_the_default_as_list_does(runner, installed):
    def shown(name):
        result = runner.invoke(cli, ["models", "show", name, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)["default"]

    listed = {m["name"]: m["default"] for m in json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)}
    assert listed == {installed.name: False, "bundled": True}
    assert shown("bundled") is True and shown(installed.name) is False
    assert "name:           bundled (default)\n" in runner.invoke(cli, ["models", "show", "bundled"]).output
    assert runner.invoke(cli, ["models", "default", installed.name]).exit_code == 0
    assert shown("bundled") is False and shown(str(installed)) is True


def test_models_show_unknown_name_is_one_line(runner, installed):
    result = runner.invoke(cli, ["models", "show", "nope"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: no model 'nope'") and installed.name in result.output


# synnav evaluate --plots


def test_evaluate_data_without_some_labels_treats_them_as_unknown(runner, model_dir, dataset_path, tmp_path):
    """docs/data-format.md: a label missing from the data is unknown, not a reason to refuse."""
    records = json.loads(dataset_path.read_text())
    for record in records:
        del record["labels"]["nucleus"], record["labels"]["inhibitory synapse"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(records))
    args = ["evaluate", "--model", str(model_dir), "--split", "all", "--format", "json"]
    full = runner.invoke(cli, [*args, "--data", str(dataset_path)])
    result = runner.invoke(cli, [*args, "--data", str(partial)])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("lacks the model's labels nucleus, inhibitory synapse") == 1
    metrics, reference = json.loads(result.stdout)["labels"], json.loads(full.stdout)["labels"]
    assert metrics["nucleus"]["known"] == metrics["inhibitory_synapse"]["known"] == 0
    assert metrics["nucleus"]["roc_auc"] is None and metrics["nucleus"]["f1"] is None
    assert metrics["cytosol"] == reference["cytosol"]
    table = runner.invoke(cli, [*args[:-2], "--data", str(partial), "--plots", str(tmp_path / "figures")])
    assert table.exit_code == 0, table.output
    assert any(line.startswith("nucleus") and "n/a" in line for line in table.stdout.splitlines())
    for record in records:
        record["labels"] = {"golgi": 1}
    partial.write_text(json.dumps(records))
    one_error_line(runner.invoke(cli, [*args, "--data", str(partial)]), "none of the model's labels")


def test_evaluate_plots(runner, model_dir, dataset_path, tmp_path):
    figures = tmp_path / "figures"
    result = runner.invoke(cli, ["evaluate", "--model", str(model_dir), "--model", str(model_dir),
                                 "--data", str(dataset_path), "--split", "all", "--format", "json",
                                 "--plots", str(figures)])
    assert result.exit_code == 0, result.output
    labels = read_dataset(dataset_path).label_names
    expected = {f"{kind}-{column_name(label)}.png" for kind in ("roc", "pr") for label in labels}
    names = {p.name for p in figures.iterdir()}
    assert {n for n in names if n.startswith(("roc-", "pr-"))} == expected and "metrics.png" in names
    for png in figures.iterdir():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_with_scores_matches_metrics(model_dir, dataset_path):
    from synnav_cli.evaluate import evaluate, evaluate_with_scores
    from synnav_cli.metrics import evaluate_predictions
    from synnav_cli.modeldir import read_model_info

    info = read_model_info(model_dir)
    result, scores = evaluate_with_scores(info, dataset_path, split="test", device="cpu")
    assert scores.probabilities.shape == scores.labels.shape == (result["proteins"], len(info.label_names))
    metrics = evaluate_predictions(scores.labels, scores.probabilities, info.label_names, info.thresholds)["labels"]
    # evaluate adds the calibration errors (ece_raw, ece, brier_raw, brier) to the same metrics.
    assert {label: {k: v for k, v in values.items() if k in metrics[label]}
            for label, values in result["labels"].items()} == metrics
    assert {"ece_raw", "ece"} <= set(result["labels"][info.label_names[0]])
    assert evaluate(info, dataset_path, split="test", device="cpu")["labels"] == result["labels"]


def test_plots_without_matplotlib_is_a_clear_error(runner, model_dir, dataset_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ModuleNotFoundError
    result = runner.invoke(cli, ["evaluate", "--model", str(model_dir), "--data", str(dataset_path),
                                 "--plots", str(tmp_path / "figures")])
    assert result.exit_code == 1
    # synnav is installed from its repository until a release: 'synnav[plots]' would find nothing.
    assert 'pip install ".[plots]"` in the synnav repository' in result.output
    assert 'pip install "matplotlib>=3.7"' in result.output and "Traceback" not in result.output
    assert "synnav[" not in "".join(cli.commands[c].get_help(click.Context(cli.commands[c])) for c in cli.commands)


# synnav predict --explain


def test_predict_explain_writes_tsv_and_png(runner, model_dir, tmp_path):
    fasta = _fasta(tmp_path / "in.fasta", {"sp|P1|ONE": "MKTAYIAKQRQISFVKSHFSRQ", "P2": "MEEPQSDPSVEPPLSQETFSDLWKLL"})
    out_dir = tmp_path / "explain"
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model_dir), "--explain", str(out_dir),
                                 "--explain-steps", "8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
    assert [r["id"] for r in rows] == ["sp|P1|ONE", "P2"]  # the normal output is unchanged
    assert sorted(p.name for p in out_dir.iterdir()) == ["P2.png", "P2.tsv", "sp_P1_ONE.png", "sp_P1_ONE.tsv",
                                                         "summary.tsv"]
    for row, stem in zip(rows, ["sp_P1_ONE", "P2"]):
        table = list(csv.reader((out_dir / f"{stem}.tsv").open(), delimiter="\t"))
        header, body = table[0], table[1:]
        predicted = row["predicted"].split(";") if row["predicted"] else None
        assert header[:2] == ["position", "residue"]
        if predicted:
            assert header[2:] == predicted
        assert len(header) >= 3
        assert [int(r[0]) for r in body] == list(range(1, int(row["length"]) + 1))
        assert all(np.isfinite(float(v)) for r in body for v in r[2:])


def test_attributions_sum_to_the_probability_change(model_dir):
    """Integrated gradients' completeness: attributions add up to p(input) - p(baseline)."""
    import torch

    loaded = load_for_scoring(str(model_dir), device="cpu")
    sequence = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
    values = attribute(loaded, sequence, [0, 1], steps=64)
    assert values.shape == (len(sequence), 2)
    batch = loaded.backbone.tokenize([sequence])
    pad = loaded.backbone.input_embedding(loaded.model.encoder).padding_idx
    baseline = type(batch)(torch.where(batch.residue_mask, pad, batch.input_ids), batch.attention_mask,
                           batch.residue_mask)
    with torch.no_grad():
        p_input = torch.sigmoid(loaded.model(batch))[0, :2].numpy()
        p_baseline = torch.sigmoid(loaded.model(baseline))[0, :2].numpy()
    np.testing.assert_allclose(values.sum(axis=0), p_input - p_baseline, atol=0.02)
    # the baseline probability --explain reports (summary.tsv) is that same p(baseline)
    np.testing.assert_allclose(baseline_probabilities(loaded, sequence, [0, 1]), p_baseline, atol=1e-5)


def test_file_stems_are_safe_and_unique():
    taken: set[str] = set()
    assert [file_stem(i, taken) for i in ["sp|P1|A", "sp_P1_A", "../x", "SP|P1|A"]] == \
        ["sp_P1_A", "sp_P1_A-2", "x", "SP_P1_A-3"]


# synnav predict --compare


def test_pair_mutants():
    ids = ["A", "A_mut_R1W", "B_mut_K2E", "A_mut_R1W_mut_G5D", "C", "C_mutant"]
    pairs, orphans = pair_mutants(ids)
    assert pairs == [("A_mut_R1W", "A"), ("A_mut_R1W_mut_G5D", "A_mut_R1W"), ("C_mutant", "C")]
    assert orphans == ["B_mut_K2E"]


def test_predict_compare_table(runner, model_dir, tmp_path):
    wild = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
    mutant = wild[:5] + "W" + wild[6:]
    fasta = _fasta(tmp_path / "in.fasta", {"P1": wild, "P1_mut_I6W": mutant, "P1_mut_same": wild,
                                           "P9": "MEEPQSDPSV"})
    plain = runner.invoke(cli, ["predict", str(fasta), "--model", str(model_dir), "--device", "cpu"])
    probabilities = {r["id"]: r for r in csv.DictReader(io.StringIO(plain.stdout), delimiter="\t")}
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model_dir), "--compare", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
    labels = json.loads((model_dir / "synnav-model.json").read_text())["labels"]
    labels = [n.replace(" ", "_") for n in labels]  # output columns have no spaces
    per_label = [f"{kind}_{n}" for n in labels for kind in ("wild_type", "mutant", "delta")]
    assert list(rows[0]) == ["mutant", "wild_type", *per_label, "predicted", "gained", "lost"]
    assert [(r["mutant"], r["wild_type"]) for r in rows] == [("P1_mut_I6W", "P1"), ("P1_mut_same", "P1")]
    for label in labels:
        expected = float(probabilities["P1_mut_I6W"][label]) - float(probabilities["P1"][label])
        assert float(rows[0][f"delta_{label}"]) == pytest.approx(expected, abs=2e-4)
        assert float(rows[1][f"delta_{label}"]) == 0.0
        # the two probabilities the delta is the difference of, as plain predict gives them
        assert float(rows[0][f"wild_type_{label}"]) == pytest.approx(float(probabilities["P1"][label]), abs=1e-4)
        assert float(rows[0][f"mutant_{label}"]) == pytest.approx(float(probabilities["P1_mut_I6W"][label]), abs=1e-4)
        assert float(rows[0][f"mutant_{label}"]) - float(rows[0][f"wild_type_{label}"]) == pytest.approx(
            float(rows[0][f"delta_{label}"]), abs=2e-4)
    assert rows[0]["predicted"] == probabilities["P1_mut_I6W"]["predicted"]

    jsonl = runner.invoke(cli, ["predict", str(fasta), "--model", str(model_dir), "--compare", "--format", "jsonl",
                                "--out", str(tmp_path / "cmp.jsonl"), "--device", "cpu"])
    assert jsonl.exit_code == 0 and jsonl.stdout == ""
    first = json.loads((tmp_path / "cmp.jsonl").read_text().splitlines()[0])
    assert first["mutant"] == "P1_mut_I6W" and set(first["delta"]) == set(labels)
    for label in labels:
        assert first["mutant_probabilities"][label] - first["wild_type_probabilities"][label] == pytest.approx(
            first["delta"][label], abs=2e-4)


def test_predict_compare_from_stdin_without_pairs(runner, model_dir):
    result = runner.invoke(cli, ["predict", "-", "--model", str(model_dir), "--compare", "--device", "cpu"],
                           input=">P1\nMKTAYIAKQ\n>P2\nMEEPQSDPSV\n")
    assert result.exit_code == 1
    assert "no mutant/wild-type pairs" in result.output


def test_evaluate_several_models_side_by_side(runner, model_dir, dataset_path):
    result = runner.invoke(cli, ["evaluate", "-m", str(model_dir), "-m", "bundled", "-d", str(dataset_path),
                                 "--format", "markdown"])
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.stdout.strip().splitlines()
    assert header.startswith("| label | tiny-user-features f1 |") and "| bundled roc_auc |" in header
    assert set(rule) <= set("|-")
    assert rows[-1].startswith("| mean |")
    labels = [row.split("|")[1].strip() for row in rows[:-1]]
    assert labels == [column_name(n) for n in json.loads((model_dir / "synnav-model.json").read_text())["labels"]]
    per_model = ["f1", "roc_auc", "pr_auc", "mcc", "ece_raw", "ece", "support"]
    assert [c.strip() for c in header.split("|")[2:-1]] == [
        f"{name} {metric}" for name in ("tiny-user-features", "bundled") for metric in per_model]
    cells = rows[-1].split("|")[2:-1]
    assert len(cells) == 2 * len(per_model)
    assert all(0.0 <= float(c) <= 1.0 for c in cells if c.strip() and c.strip() != "n/a" and not c.startswith(" -"))


# one spelling of the labels, --explain's baseline and model line


def test_every_output_spells_labels_as_predicts_columns(runner, installed, dataset_path, tmp_path):
    """README: predict's label columns have no spaces (excitatory_synapse). evaluate (json, tsv,
    figures) and models show (json, text) name labels the same way, so that tables join."""
    fasta = _fasta(tmp_path / "in.fasta", {"P1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"})
    header = runner.invoke(cli, ["predict", str(fasta), "--model", str(installed)]).stdout.splitlines()[0]
    meta = json.loads((installed / "synnav-model.json").read_text())
    assert any(" " in name for name in meta["labels"])  # the model itself spells some with a space
    columns = [name for name in header.split("\t") if name.replace("_", " ") in meta["labels"] or name in meta["labels"]]
    assert len(columns) == len(meta["labels"]) and not any(" " in c for c in columns)

    args = ["evaluate", "--model", str(installed), "--data", str(dataset_path), "--split", "all"]
    report = json.loads(runner.invoke(cli, [*args, "--format", "json", "--plots", str(tmp_path / "fig")]).stdout)
    assert list(report["labels"]) == columns
    assert {f"roc-{c}.png" for c in columns} | {f"pr-{c}.png" for c in columns} <= {
        p.name for p in (tmp_path / "fig").iterdir()}
    tsv = list(csv.reader(io.StringIO(runner.invoke(cli, [*args, "--format", "tsv"]).stdout), delimiter="\t"))
    assert [row[0] for row in tsv[1:-1]] == columns

    shown = json.loads(runner.invoke(cli, ["models", "show", installed.name, "--json"]).stdout)
    assert shown["labels"] == list(shown["thresholds"]) == list(shown["metrics"]["test"]["labels"]) == columns
    assert list(shown["label_counts"]) == columns
    text = runner.invoke(cli, ["models", "show", installed.name]).stdout
    assert all(any(line.strip().startswith(c + " ") for line in text.splitlines()) for c in columns)


def test_explain_says_the_model_once_and_gives_the_baseline(runner, installed, tmp_path):
    """The model in use is named once on stderr, and summary.tsv gives each explained label's
    probability, the baseline's and the attributions' sum, which adds up to their difference."""
    assert runner.invoke(cli, ["models", "default", installed.name]).exit_code == 0
    fasta = _fasta(tmp_path / "in.fasta", {"P1": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "P2": "MEEPQSDPSVEPPLSQETFSDLWKLL"})
    out_dir = tmp_path / "explain"
    result = runner.invoke(cli, ["predict", str(fasta), "--explain", str(out_dir), "--explain-steps", "64",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stderr.count(f"Using the default model {installed.name}") == 1
    predicted = {r["id"]: r for r in csv.DictReader(io.StringIO(result.stdout), delimiter="\t")}
    rows = list(csv.DictReader((out_dir / "summary.tsv").open(), delimiter="\t"))
    assert list(rows[0]) == ["id", "file", "label", "probability", "baseline_probability", "attribution_sum",
                             "predicted"]
    assert {r["id"] for r in rows} == {"P1", "P2"}
    for row in rows:
        attributions = list(csv.DictReader((out_dir / f"{row['file']}.tsv").open(), delimiter="\t"))
        assert sum(float(a[row["label"]]) for a in attributions) == pytest.approx(float(row["attribution_sum"]),
                                                                                 abs=1e-3)
        assert float(row["probability"]) == pytest.approx(float(predicted[row["id"]][row["label"]]), abs=1e-4)
        change = float(row["probability"]) - float(row["baseline_probability"])
        assert float(row["attribution_sum"]) == pytest.approx(change, abs=0.02)
        assert 0.0 <= float(row["baseline_probability"]) <= 1.0
