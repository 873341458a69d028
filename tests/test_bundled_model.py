"""The shipped model: six trained labels, and calls a biologist can believe.

The marker panel and the shuffled-sequence check are the ones docs/bundled-model.md reports
(``benchmarks/bundled_calls.py`` measures them on the whole test split); here they run on the
eight markers and on the small test set through ``synnav predict``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from synnav_cli.cli.main import cli
from synnav_cli.modeldir import resolve_model

ROOT = Path(__file__).parent.parent
DATASET = ROOT / "data" / "dataset.json"
SMALL = Path(__file__).parent / "data" / "small.json"

# accession -> (gene, the label it is the textbook example of)
MARKERS = {
    "Q15388": ("TOMM20", "mitochondrion"),
    "P27797": ("CALR", "ER"),
    "P02545": ("LMNA", "nucleus"),
    "P04406": ("GAPDH", "cytosol"),
    "P78352": ("DLG4", "excitatory synapse"),
    "Q9NQX3": ("GPHN", "inhibitory synapse"),
    "P14867": ("GABRA1", "inhibitory synapse"),
    "P42261": ("GRIA1", "excitatory synapse"),
}


def _predict(runner, tmp_path: Path, sequences: dict[str, str]) -> dict[str, dict]:
    fasta = tmp_path / "input.fasta"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in sequences.items()))
    result = runner.invoke(cli, ["predict", str(fasta), "--format", "tsv", "--offline"])
    assert result.exit_code == 0, result.output
    return {row["id"]: row for row in csv.DictReader(io.StringIO(result.stdout), delimiter="\t")}


def _called(row: dict) -> set[str]:
    return {name.strip() for name in row["predicted"].replace(";", ",").split(",") if name.strip()}


def test_all_six_labels_are_trained():
    info, how = resolve_model(None)
    assert how == "bundled"
    assert len(info.label_names) == 6
    counts = info.meta["data"]["label_counts"]
    test = info.meta["metrics"]["test"]["labels"]
    for name, threshold in zip(info.label_names, info.thresholds):
        assert counts[name]["positive"] > 100 and counts[name]["negative"] > 100, name
        assert 0.0 < threshold < 1.0, name  # no label is switched off
        assert test[name]["roc_auc"] is not None and test[name]["roc_auc"] > 0.5, name
    assert info.meta["data"]["decoys"]["train"] > 0
    assert (info.path / "model.safetensors").stat().st_size < 4_000_000


def test_six_non_constant_columns_on_real_proteins(runner, tmp_path):
    records = [r for r in json.loads(SMALL.read_text()) if r["split"] == "test"]
    rows = _predict(runner, tmp_path, {r["entry"]: r["sequence"] for r in records})
    info, _ = resolve_model(None)
    for name in info.label_names:
        column = name.replace(" ", "_")  # output columns have no spaces
        values = np.array([float(row[column]) for row in rows.values()])
        assert values.std() > 0.01, name


def test_marker_panel_is_held_out_and_called_in_its_compartment(runner, tmp_path):
    records = {r["entry"]: r for r in json.loads(DATASET.read_text()) if r["entry"] in MARKERS}
    assert set(records) == set(MARKERS)
    assert all(r["split"] == "test" for r in records.values())  # never trained on
    rows = _predict(runner, tmp_path, {acc: r["sequence"] for acc, r in records.items()})
    hits = {acc for acc, (_, label) in MARKERS.items() if label.replace(" ", "_") in _called(rows[acc])}
    missed = sorted(MARKERS[acc][0] for acc in set(MARKERS) - hits)
    # Floors, not the shipped model's exact panel: eight proteins move with the training seed
    # (docs/bundled-model.md). At least five of eight, three of the four compartment markers,
    # and a synapse call for at least one of the four synapse markers.
    assert len(hits) >= 5, f"markers not called in their compartment: {missed}"
    assert len(hits & {"Q15388", "P27797", "P02545", "P04406"}) >= 3, missed
    assert hits & {"P78352", "P42261", "Q9NQX3", "P14867"}, missed


def test_shuffled_sequences_get_far_fewer_calls(runner, tmp_path):
    records = [r for r in json.loads(SMALL.read_text()) if r["split"] in ("dev", "test")]
    rng = np.random.default_rng(0)
    real = {r["entry"]: r["sequence"] for r in records}
    shuffled = {f"shuffled-{k}": "".join(rng.permutation(list(v))) for k, v in real.items()}
    rows = _predict(runner, tmp_path, {**real, **shuffled})
    real_calls = sum(len(_called(rows[k])) for k in real)
    shuffled_calls = sum(len(_called(rows[k])) for k in shuffled)
    assert real_calls >= len(real) // 2
    assert shuffled_calls * 4 <= real_calls, (shuffled_calls, real_calls)
