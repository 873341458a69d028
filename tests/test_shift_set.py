"""data/shift.json: dev and test proteins labelled by GO or OpenCell, none labelled by HOU."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synnav_cli.data.dataset import read_dataset
from synnav_cli.resources import bundled_shift_path

ROOT = Path(__file__).parent.parent
DATASET = ROOT / "data" / "dataset.json"
SHIFT = ROOT / "data" / "shift.json"
SHARED = ROOT.parent / "shared" / "data"
COMPARTMENTS = ("cytosol", "ER", "mitochondrion", "nucleus")
SYNAPSES = ("excitatory synapse", "inhibitory synapse")
GO, OPENCELL = "GO-CC located rule", "OpenCell level2"


@pytest.fixture(scope="module")
def shift() -> list[dict]:
    return json.loads(SHIFT.read_text())


@pytest.fixture(scope="module")
def dataset() -> dict[str, dict]:
    return {r["entry"]: r for r in json.loads(DATASET.read_text())}


def test_reads_with_the_dataset_labels_in_dev_and_test(shift):
    data = read_dataset(SHIFT)
    assert data.label_names == read_dataset(DATASET).label_names == [*COMPARTMENTS, *SYNAPSES]
    assert data.splits is not None and set(data.splits) == {"dev", "test"}
    assert len(data) == len(shift) and len(set(data.sequences)) == len(data)
    synapse = [data.label_names.index(name) for name in SYNAPSES]
    assert np.isnan(data.labels[:, synapse]).all()
    compartments = data.labels[:, : len(COMPARTMENTS)]
    assert (~np.isnan(compartments)).any(axis=1).all()  # each protein has a known compartment
    assert {r["source"] for r in shift} == {GO, OPENCELL}


def test_go_part_is_dataset_proteins_hou_leaves_unknown_in_their_split(shift, dataset):
    go = [r for r in shift if r["source"] == GO]
    assert go
    for record in go:
        shipped = dataset[record["entry"]]
        assert record["split"] == shipped["split"] in ("dev", "test")
        assert record["sequence"] == shipped["sequence"]
        assert all(shipped["labels"][name] is None for name in COMPARTMENTS), record["entry"]
        for name in COMPARTMENTS:  # every value carries the GO terms behind it
            if record["labels"][name] is not None:
                assert record["evidence"][name][0].startswith("GO-CC"), (record["entry"], name)


def test_opencell_part_is_outside_the_dataset_and_split_by_hash(shift, dataset):
    opencell = [r for r in shift if r["source"] == OPENCELL]
    assert opencell
    sequences = {r["sequence"] for r in dataset.values()}
    for record in opencell:
        assert record["entry"] not in dataset and record["sequence"] not in sequences
        assert all(record["labels"][name] in (0, 1) for name in COMPARTMENTS)
        parity = hashlib.sha256(record["entry"].encode()).digest()[0] % 2
        assert record["split"] == ("dev", "test")[parity]
    assert {r["split"] for r in opencell} == {"dev", "test"}


def test_bundled_shift_path_is_the_shipped_file():
    path = bundled_shift_path()
    assert path is not None and path.read_bytes() == SHIFT.read_bytes()


def test_rebuild_is_identical(tmp_path):
    if not (SHARED / "seq2loc_hou" / "opencell_raw.csv").is_file():
        pytest.skip(f"needs the shared source files under {SHARED}")
    out = tmp_path / "shift.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build_shift_set.py"),
            str(SHARED),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_bytes() == SHIFT.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["shift.json"]  # no temporary file left
    assert "| GO-CC located rule | dev |" in result.stderr
