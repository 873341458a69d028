"""scripts/go_compartments.py: GO-derived compartment labels, an opt-in variant never shipped."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import go_compartments as gc  # noqa: E402

NAMES = {term: name for terms in gc.GO_TERMS.values() for term, name in terms.items()} | {
    "GO:0005737": "cytoplasm",
    "GO:0005886": "plasma membrane",
    "GO:0070062": "extracellular exosome",
}


def test_a_positive_carries_its_terms_and_the_lower_confidence_mark():
    labels, evidence = gc.compartment_labels({"GO:0005743", "GO:0005886"}, NAMES)
    assert labels == {"cytosol": 0, "ER": 0, "mitochondrion": 1, "nucleus": 0}
    assert evidence["mitochondrion"] == [gc.SOURCE, "GO:0005743 mitochondrial inner membrane"]
    assert all(gc.SOURCE in evidence[name][0] for name in gc.COMPARTMENTS)


def test_terms_that_place_a_protein_nowhere_make_no_negative():
    # "cytoplasm" without "cytosol" says nothing against cytosol.
    labels, evidence = gc.compartment_labels({"GO:0005737", "GO:0070062"}, NAMES)
    assert labels == dict.fromkeys(gc.COMPARTMENTS) and evidence == {}
    labels, _ = gc.compartment_labels({"GO:0005737", "GO:0070062"}, NAMES, rule="any")
    assert set(labels.values()) == {0}


def test_no_annotation_is_unknown_under_every_rule():
    for rule in gc.RULES:
        assert gc.compartment_labels(set(), NAMES, rule)[0] == dict.fromkeys(gc.COMPARTMENTS)


@pytest.mark.parametrize("rule, expected", [
    ("positives-only", {"cytosol": None, "ER": None, "mitochondrion": None, "nucleus": 1}),
    ("negatives-only", {"cytosol": 0, "ER": 0, "mitochondrion": 0, "nucleus": None}),
])  # fmt: skip
def test_the_one_sided_rules(rule, expected):
    assert gc.compartment_labels({"GO:0005654"}, NAMES, rule)[0] == expected


def test_every_term_id_names_its_term_in_the_shared_go_file():
    path = ROOT.parent / "shared" / "data" / "synapse" / "go" / "cc_ic.json"
    if not path.is_file():
        pytest.skip("shared GO data not here")
    gc.check_names({t: info["name"] for t, info in json.loads(path.read_text()).items()})
    with pytest.raises(SystemExit):
        gc.check_names({"GO:0005829": "cytoplasm"})
