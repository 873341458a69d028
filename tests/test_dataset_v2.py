"""data/dataset.json's synapse labels: the negative rule, the evidence field, the marker panel."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from synnav_cli.data.dataset import read_dataset

ROOT = Path(__file__).parent.parent
DATASET = ROOT / "data" / "dataset.json"
SMALL = Path(__file__).parent / "data" / "small.json"


def _load_build_script():
    spec = importlib.util.spec_from_file_location("build_dataset", ROOT / "scripts" / "build_dataset.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


build = _load_build_script()
EXC, INH, UNTYPED = build.EXCITATORY, build.INHIBITORY, build.UNTYPED


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return json.loads(DATASET.read_text())


# --- the rule, on its own ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "evidence, annotated, in_table, expected",
    [
        # Positive evidence of one type: 1 for it, unknown (never 0) for the other.
        ({EXC: ["GO:0098978 glutamatergic synapse"]}, True, True, (1, None)),
        ({INH: ["Uezu2016_iPSD_Gphn"]}, False, True, (None, 1)),
        ({EXC: ["Uezu2016_ePSD"], INH: ["GO:0098982 GABA-ergic synapse"]}, True, True, (1, 1)),
        # Supporting excitatory evidence alone is neither a positive nor a negative.
        ({EXC: ["GO:0014069 postsynaptic density"]}, True, False, (None, None)),
        ({EXC: ["protGPS POST_SYNAPTIC_DENSITY"]}, True, False, (None, None)),
        ({EXC: ["Biesemann2014_All Synaptosome", "Gao_PSD95BioID_SST"]}, True, False, (None, None)),
        # Synapse-related GO terms without a type: unknown for both.
        ({UNTYPED: ["GO:0045202 synapse"]}, True, False, (None, None)),
        # The negative: GO-annotated, nothing synaptic anywhere.
        ({}, True, False, (0, 0)),
        # "Not on a list" is never a negative: no GO annotation, or a reference-table row.
        ({}, False, False, (None, None)),
        ({}, True, True, (None, None)),
    ],
)
def test_negative_rule(evidence, annotated, in_table, expected):
    labels = build.synapse_labels(evidence, annotated, in_table)
    assert (labels[EXC], labels[INH]) == expected


def _sources(go: dict[str, list[str]], names: dict[str, str], proteomes=None):
    return build.SynapseSources(go, names, proteomes or {}, set(), {}, {}, [])


def test_evidence_classifies_go_terms_and_proteomes():
    names = {
        "GO:0098978": "glutamatergic synapse",
        "GO:1902711": "GABA-A receptor complex",
        "GO:0014069": "postsynaptic density",
        "GO:0043197": "dendritic spine",
        "GO:0005829": "cytosol",
    }
    sources = _sources({"P1": list(names)}, names, {"P1": ["Uezu2016_iPSD_Gphn", "Biesemann2014_All FASS"]})
    evidence, annotated = build.synapse_evidence(["P1"], sources, psd=1)
    assert annotated
    assert evidence[EXC] == ["Biesemann2014_All FASS", "GO:0014069 postsynaptic density",
                             "GO:0098978 glutamatergic synapse", "protGPS POST_SYNAPTIC_DENSITY"]
    assert evidence[INH] == ["GO:1902711 GABA-A receptor complex", "Uezu2016_iPSD_Gphn"]
    assert evidence[UNTYPED] == ["GO:0043197 dendritic spine"]  # cytosol is not evidence


def test_non_neuronal_synapse_like_terms_do_not_block_a_negative():
    names = {"GO:0001772": "immunological synapse", "GO:0000795": "synaptonemal complex"}
    sources = _sources({"P1": list(names)}, names)
    evidence, annotated = build.synapse_evidence(["P1"], sources, psd=0)
    assert evidence == {} and annotated
    assert build.synapse_labels(evidence, annotated, False) == {EXC: 0, INH: 0}


# --- the shipped file -------------------------------------------------------------------------


def test_the_loader_reads_the_file_with_its_evidence_field():
    data = read_dataset(DATASET)
    assert data.label_names == list(build.LABELS)
    for split in ("train", "dev", "test"):
        part = data.subset(split).labels
        for j, name in enumerate(data.label_names):
            column = part[:, j]
            assert (column == 1).sum() > 0 and (column == 0).sum() > 0, (split, name)
    assert not np.isnan(data.labels).all(axis=0).any()  # no label without data


def test_every_synapse_positive_carries_its_evidence(records):
    for r in records:
        evidence = r.get("evidence", {})
        assert set(evidence) <= {EXC, INH, UNTYPED}, r["entry"]
        assert all(sources and sources == sorted(sources) for sources in evidence.values())
        for label in (EXC, INH):
            if r["labels"][label] == 1:
                strong = [s for s in evidence.get(label, []) if build.is_positive_evidence(label, s)]
                assert strong, (r["entry"], label)


def test_negatives_carry_no_synapse_evidence_and_are_negative_for_both(records):
    negatives = [r for r in records if 0 in (r["labels"][EXC], r["labels"][INH])]
    assert len(negatives) > 1000
    for r in negatives:
        assert r["labels"][EXC] == r["labels"][INH] == 0, r["entry"]
        assert "evidence" not in r, r["entry"]


def test_one_type_of_evidence_leaves_the_other_unknown(records):
    only_inh = [r for r in records if r["labels"][INH] == 1 and not any(
        build.is_positive_evidence(EXC, s) for s in r.get("evidence", {}).get(EXC, []))]
    assert only_inh
    assert all(r["labels"][EXC] is None for r in only_inh)


def test_the_psd_proxy_is_no_longer_the_excitatory_label(records):
    psd_only = [r for r in records if r.get("evidence", {}).get(EXC) == [build.PSD_EVIDENCE]]
    assert psd_only
    assert all(r["labels"][EXC] is None for r in psd_only)  # GAPDH among them
    gapdh = next(r for r in records if r["entry"] == "P04406")
    assert gapdh["labels"][EXC] is None


def test_marker_panel_is_in_the_test_split(records):
    by_entry = {r["entry"]: r for r in records}
    for accession, (gene, _) in build.MARKERS.items():
        assert by_entry[accession]["split"] == "test", gene
    assert by_entry["Q9NQX3"]["labels"][INH] == 1  # gephyrin
    assert by_entry["P14867"]["labels"][INH] == 1  # GABA-A receptor alpha 1
    assert by_entry["P78352"]["labels"][EXC] == 1  # PSD-95
    assert by_entry["P42261"]["labels"][EXC] == 1  # GluA1


def test_small_set_is_a_subset_of_the_shipped_file(records):
    by_entry = {r["entry"]: r for r in records}
    small = json.loads(SMALL.read_text())
    assert len(small) == sum(build.SMALL_PER_SPLIT.values())
    for r in small:
        assert r == by_entry[r["entry"]]
    for label in build.LABELS:
        values = {r["labels"][label] for r in small}
        assert values == {0, 1, None}, label
