#!/usr/bin/env python3
"""Build the dataset that ships with synnav from the public source files, reproducibly.

Reads (under SHARED, default ../shared/data relative to the repository root):
    seq2loc_hou/hou_testset.csv            cytosol / ER / mitochondrion / nucleus (real 0/1)
    seq2loc_hou/hou.fasta                  sequences for proteins only the synapse sources label
    seq2loc_hou/opencell_raw.csv           gene symbols for data/example.fasta
    protgps/dataset_from_json.csv          more sequences; POST_SYNAPTIC_DENSITY kept as evidence
    synapse/go/associations_CC.json        GO cellular-component terms per human accession
    synapse/go/cc_ic.json                  GO term names
    synapse/genelists/*.gmt                synapse proteomes (mouse Entrez ids): set sizes only
    synapse/synapse_labels_human.csv       the proteomes mapped to human accessions (see below)

Writes:
    data/dataset.json       every protein, protGPS-style records, one per line
    data/example.fasta      eight well-known proteins for the README quick start
    tests/data/small.json   a 120-protein subset for the test suite
    data/README.md          only the part between the GENERATED markers (counts, command)

Usage (from the repository root):
    python scripts/build_dataset.py                 # rebuild everything
    python scripts/build_dataset.py --check         # exit 1 if the files on disk differ
    python scripts/build_dataset.py --go-compartments --out OUT.json
        # a variant for measuring, never shipped: data/dataset.json plus lower-confidence
        # GO-derived compartment labels for training proteins HOU does not label
        # (scripts/go_compartments.py), with data/dataset.json's splits; writes OUT.json only

Synapse labels (the rule is documented in data/README.md and tested in tests/test_dataset_v2.py):
a protein is excitatory-synapse positive on direct GO excitatory/glutamatergic terms or the
Uezu 2016 ePSD proteome, inhibitory-synapse positive on GO GABA-ergic/glycinergic/inhibitory
terms or an inhibitory PSD proteome; evidence of one type only leaves the other unknown; both
are negative only for a protein with GO cellular-component annotations, none of them
synapse-related, and no synapse evidence in any source. Everything else is unknown (null).

Splits are homology-aware when MMseqs2 is on PATH (``apt-get install mmseqs2``): sequences are
clustered at 30% identity and whole clusters go to one split. Without it the script falls back
to exact-sequence groups, says so, and the output will differ from the shipped files.
Every decision is documented in data/README.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))  # also when loaded by path, as the tests do

import go_compartments  # noqa: E402  (needs the sys.path line above)

from synnav_cli.data import homology  # noqa: E402  (needs the sys.path line above

LABELS = (
    "cytosol",
    "ER",
    "mitochondrion",
    "nucleus",
    "excitatory synapse",
    "inhibitory synapse",
)
HOU_LABELS = LABELS[:4]
EXCITATORY, INHIBITORY = LABELS[4], LABELS[5]
# Evidence of a synapse whose type the source does not give (GO "synapse", "postsynapse", ...).
UNTYPED = "synapse, type not given"
# seq2loc `level2` -> our label. Nucleoli sit inside the nucleus: a nucleolar protein is nuclear.
HOU_LEVEL2 = {
    "cytosol": "cytosol",
    "endoplasmic-reticulum": "ER",
    "mitochondria": "mitochondrion",
    "nucleus": "nucleus",
    "nucleoli": "nucleus",
}
HOU_LEVEL2_KNOWN = set(HOU_LEVEL2) | {
    "cytoskeleton",
    "plasma-membrane",
    "golgi-apparatus",
    "vesicles",
    "plastid",
}
PSD_COLUMN = "POST_SYNAPTIC_DENSITY"
PSD_EVIDENCE = "protGPS POST_SYNAPTIC_DENSITY"
# The 20 standard residues plus selenocysteine (U), a real residue the ESM vocabulary knows.
VALID_SEQUENCE = re.compile(r"[ACDEFGHIKLMNPQRSTVWYU]+")
# UniProt accession format (uniprot.org/help/accession_numbers).
ACCESSION = re.compile(r"[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9]([A-Z][A-Z0-9]{2}[0-9]){1,2}")

SEED = 0
FRACTIONS = (0.7, 0.15, 0.15)
MIN_SEQ_ID = 0.3
COVERAGE = 0.8
COV_MODE = 1
THREADS = 1

SOURCES = {
    "hou": "seq2loc_hou/hou_testset.csv",
    "hou_fasta": "seq2loc_hou/hou.fasta",
    "opencell": "seq2loc_hou/opencell_raw.csv",
    "protgps": "protgps/dataset_from_json.csv",
    "go": "synapse/go/associations_CC.json",
    "go_names": "synapse/go/cc_ic.json",
    "synapse_table": "synapse/synapse_labels_human.csv",
    "human_names": "synapse/uniprot_names/uniprot_database_human_2025.csv",
    "gmt_uezu_ipsd": "synapse/genelists/015_Uezu-2016-iPSD-Proteome.gmt",
    "gmt_compiled_ipsd": "synapse/genelists/016_compiled-iPSD-Proteome.gmt",
    "gmt_biesemann": "synapse/genelists/035_Biesemann-2014-Excitatory-Synapse-Proteome.gmt",
    "gmt_gao": "synapse/genelists/056_Gao-IN-PSD95-BioID.gmt",
    "gmt_uezu_epsd": "synapse/genelists/059_Uezu-2016-ePSD-Proteome.gmt",
}
EXPECTED_SHA256 = {
    "hou": "8636c3e23fcb6986279f1cbc924bc6c7b6e8fc8b3b974b2e4daf86b42bb0ccda",
    "hou_fasta": "7fd11a8994317b5623bb112503a294208741dc1bf24fff4dbec555ce4444a2b7",
    "opencell": "f669f8df83a278b27b885859c2484123ffc3d2a0b8f309735e98b43c478a4ff8",
    "protgps": "ef061051fa1c3a46598484316017814882a1c6e11be98d4a353d68ab670b365b",
    "go": "dc7e76ffbf26fb10d1b4db22a5e42969955a458f68ee4b1a41d9b1b9cc934826",
    "go_names": "7c3819e7587f320343657d052a778725db50a2d294c0d62f7db6d5736c54fcee",
    "synapse_table": "2e23f9f3aaa3e319c4d5cb83c667215003bb6df9572061099b701afe3cdf1408",
    "human_names": "c31939aca68144884aa41e210c64ca3effedd8bf39fb4c6369774e10317d9ef8",
    "gmt_uezu_ipsd": "02e521c81c80b0188c64956a6837c3b9e87d43df8e4f71d4220625fc58e9d420",
    "gmt_compiled_ipsd": "7fe31e5ec4cac807bd1869f2ce206a09989ef4d48a338b84b686c2f45ff6c15a",
    "gmt_biesemann": "1acece792664a9a072d73791bb5ee52dee4e1bcf3419a568126c245b3a03bdfb",
    "gmt_gao": "0cad549ac283336295c1e191516f73f31ae3fc154e7e5e5e1c23797a093b8682",
    "gmt_uezu_epsd": "328eee3fd5594481f36dcf6fa4407e9a0eff5aa59a49394c652153c85d3572fe",
}
# GMT file -> the prefix its sets carry in synapse_labels_human.csv's `proteomics_sets` column.
GMT_SET_PREFIX = {
    "gmt_uezu_ipsd": "Uezu2016_iPSD_",
    "gmt_compiled_ipsd": "compiled_iPSD_",
    "gmt_biesemann": "Biesemann2014_",
    "gmt_gao": "Gao_PSD95BioID_",
    "gmt_uezu_epsd": "Uezu2016_",
}

# Direct GO cellular-component terms that make a positive. Excitatory: glutamatergic synapses
# and their named instances, asymmetric synapses, ionotropic glutamate receptor complexes.
GO_EXCITATORY = {
    "GO:0098978": "glutamatergic synapse",
    "GO:0060076": "excitatory synapse",
    "GO:0032279": "asymmetric synapse",
    "GO:0098985": "asymmetric, glutamatergic, excitatory synapse",
    "GO:0099573": "glutamatergic postsynaptic density",
    "GO:0032281": "AMPA glutamate receptor complex",
    "GO:0017146": "NMDA selective glutamate receptor complex",
    "GO:0032983": "kainate selective glutamate receptor complex",
    "GO:0008328": "ionotropic glutamate receptor complex",
    "GO:0098685": "Schaffer collateral - CA1 synapse",
    "GO:0098686": "hippocampal mossy fiber to CA3 synapse",
    "GO:0098688": "parallel fiber to Purkinje cell synapse",
    "GO:0044305": "calyx of Held",
    "GO:0150053": "cerebellar climbing fiber to Purkinje cell synapse",
    "GO:0150048": "cerebellar granule cell to Purkinje cell synapse",
    "GO:0140240": "perforant pathway to dendrate granule cell synapse",
}
# Inhibitory: GABA-ergic and glycinergic synapses, symmetric synapses, GABA and glycine receptors.
GO_INHIBITORY = {
    "GO:0098982": "GABA-ergic synapse",
    "GO:0060077": "inhibitory synapse",
    "GO:0098690": "glycinergic synapse",
    "GO:0032280": "symmetric synapse",
    "GO:0098983": "symmetric, GABA-ergic, inhibitory synapse",
    "GO:0099629": "postsynaptic specialization of symmetric synapse",
    "GO:0099164": "postsynaptic specialization membrane of symmetric synapse",
    "GO:0099192": "cerebellar Golgi cell to granule cell synapse",
    "GO:1902710": "GABA receptor complex",
    "GO:1902711": "GABA-A receptor complex",
    "GO:1902712": "G protein-coupled GABA receptor complex",
    "GO:0016935": "glycine-gated chloride channel complex",
}
# Postsynaptic density terms: GO places the PSD at asymmetric (excitatory) synapses, but these
# annotations come largely from PSD-fraction proteomics, which also catch abundant bystanders.
# Supporting excitatory evidence: recorded, never a positive on its own, and never a negative.
GO_PSD = {
    "GO:0014069": "postsynaptic density",
    "GO:0098839": "postsynaptic density membrane",
    "GO:0099092": "postsynaptic density, intracellular component",
    "GO:0099147": "extrinsic component of postsynaptic density membrane",
}
# Any other GO term whose name matches this is synapse-related: it rules a negative out.
SYNAPSE_RELATED = re.compile(
    r"synap|spine|dendrit|axon terminus|neuron projection terminus|calyx of held|"
    r"neuromuscular junction|glutamate receptor|gaba|glycine-gated",
    re.IGNORECASE,
)
NOT_SYNAPSE_RELATED = re.compile(r"synaptonemal|immunological synapse", re.IGNORECASE)

# Proteome sets (as named in synapse_labels_human.csv) -> their role.
PROTEOME_INHIBITORY_PREFIXES = ("Uezu2016_iPSD_", "compiled_iPSD_")
PROTEOME_EXCITATORY = ("Uezu2016_ePSD",)
PROTEOME_SUPPORTING_PREFIXES = ("Biesemann2014_", "Gao_PSD95BioID_")

# The marker panel: whole homology clusters holding one of these go to the test split, so that
# the shipped model's calls on them are held-out predictions.
MARKERS = {
    "Q15388": ("TOMM20", "mitochondrion"),
    "P27797": ("CALR", "ER"),
    "P02545": ("LMNA", "nucleus"),
    "P04406": ("GAPDH", "cytosol"),
    "P78352": ("DLG4", EXCITATORY),
    "Q9NQX3": ("GPHN", INHIBITORY),
    "P14867": ("GABRA1", INHIBITORY),
    "P42261": ("GRIA1", EXCITATORY),
}

# Quick-start proteins: one or more per compartment, all real rows of the sources.
EXAMPLE_ACCESSIONS = (
    "P02545",  # lamin A/C: nuclear lamina
    "P06748",  # nucleophosmin: nucleolus
    "Q15388",  # TOM20: mitochondrial outer membrane
    "P07237",  # protein disulfide-isomerase: ER lumen
    "P04406",  # GAPDH: cytosol
    "P78352",  # PSD-95: the excitatory postsynaptic scaffold
    "Q86YM7",  # Homer1: excitatory postsynaptic scaffold
    "Q9NQX3",  # gephyrin: the inhibitory postsynaptic scaffold
)

SMALL_PER_SPLIT = {"train": 84, "dev": 18, "test": 18}
SMALL_MIN_EACH = {"train": 3, "dev": 2, "test": 2}
SMALL_MAX_LENGTH = 400

BEGIN_MARK = "<!-- BEGIN GENERATED by scripts/build_dataset.py: do not edit by hand -->"
END_MARK = "<!-- END GENERATED -->"


@dataclass
class Protein:
    """One unique sequence, with the source rows merged into it."""

    sequence: str
    hou_id: str | None = None
    hou_labels: dict[str, int] | None = None
    protgps_entries: list[str] = field(default_factory=list)
    fasta_ids: list[str] = field(default_factory=list)
    psd: int | None = None  # max over the protGPS rows: positive-only list, evidence only
    entry: str = ""
    split: str = ""
    accessions: list[str] = field(default_factory=list)
    synapse: dict[str, int | None] = field(default_factory=dict)
    evidence: dict[str, list[str]] = field(default_factory=dict)
    go_labels: dict[str, int | None] = field(default_factory=dict)  # --go-compartments only

    def labels(self) -> dict[str, int | None]:
        out: dict[str, int | None] = {name: None for name in LABELS}
        if self.hou_labels is not None:
            out.update(self.hou_labels)
        else:
            out.update(self.go_labels)
        out.update(self.synapse)
        return out


@dataclass
class Log:
    dropped: list[tuple[str, str, str]] = field(default_factory=list)  # source, entry, reason
    merged_by_accession: list[tuple[str, list[str]]] = field(default_factory=list)
    fasta_skipped: int = 0  # hou.fasta records whose accession already had a sequence
    fasta_skipped_differing: list[str] = field(default_factory=list)
    no_known_label: Counter = field(default_factory=Counter)  # dropped, by source
    no_accession: int = 0
    kept_unlabelled: list[str] = field(default_factory=list)
    markers_moved: list[tuple[str, str, int]] = field(default_factory=list)


@dataclass
class SynapseSources:
    """The synapse evidence inputs, keyed by UniProt accession."""

    go: dict[str, list[str]]  # accession -> direct GO CC terms
    go_names: dict[str, str]
    proteomes: dict[str, list[str]]  # accession -> proteome set names
    in_table: set[str]  # accessions with any synapse evidence in the reference table
    table_entry_accession: dict[str, str]  # protGPS entry name -> accession (from the table)
    symbol_accession: dict[str, str]  # human gene symbol -> accession, where only one has it
    table_rows: list[dict[str, str]]

    def lookup(self, entry: str) -> set[str]:
        """Accessions to look synapse evidence up by, for one source name: an accession
        (ACC, ACC_HUMAN, ACC_GENE), or a Swiss-Prot entry name GENE_HUMAN mapped by the reference
        table, else by a gene symbol that names exactly one human accession."""
        found = accessions_of(entry)
        head = entry.split("_", 1)[0]
        if not found and ACCESSION.fullmatch(head):
            found = {head}
        if not found and entry in self.table_entry_accession:
            found = {self.table_entry_accession[entry]}
        if not found and entry.endswith("_HUMAN") and head in self.symbol_accession:
            found = {self.symbol_accession[head]}
        return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_csv(path: Path) -> list[dict[str, str]]:
    csv.field_size_limit(1 << 26)
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def read_fasta_records(path: Path) -> list[tuple[str, str]]:
    records: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            records.append((line[1:].strip(), []))
        elif line.strip():
            records[-1][1].append(line.strip())
    return [(name, "".join(parts)) for name, parts in records]


def read_gmt(path: Path) -> dict[str, set[str]]:
    """GMT: set name, URL, then member ids (``NA`` where the source had none)."""
    sets: dict[str, set[str]] = {}
    for line in path.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            sets[parts[0]] = {p for p in parts[2:] if p and p != "NA"}
    return sets


def sequence_problem(seq: str) -> str | None:
    """Why a sequence cannot be used, or None."""
    if seq.endswith("(truncated)"):
        return f"truncated by a spreadsheet cell limit ({len(seq)} characters incl. the marker)"
    if VALID_SEQUENCE.fullmatch(seq):
        return None
    bad = sorted(set(seq) - set("ACDEFGHIKLMNPQRSTVWYU"))
    shown = ", ".join(repr(ch) for ch in bad)
    if bad == ["X"]:
        return f"contains the unknown residue X ({seq.count('X')}x)"
    return f"contains characters other than amino-acid letters: {shown}"


def accessions_of(entry: str) -> set[str]:
    """UniProt accessions an entry names: the accession itself, or the one in ACC_HUMAN."""
    if ACCESSION.fullmatch(entry):
        return {entry}
    if entry.endswith("_HUMAN") and ACCESSION.fullmatch(entry[: -len("_HUMAN")]):
        return {entry[: -len("_HUMAN")]}
    return set()


def entry_rank(entry: str) -> tuple[int, str]:
    """Preference among protGPS names for one sequence: accessions first (6-character before
    10-character), then Swiss-Prot entry names (GENE_HUMAN), then TrEMBL ones (ACC_HUMAN)."""
    if ACCESSION.fullmatch(entry):
        return (0 if len(entry) == 6 else 1, entry)
    return (3 if accessions_of(entry) else 2, entry)


def load_synapse_sources(shared: Path) -> SynapseSources:
    go = json.loads((shared / SOURCES["go"]).read_text())
    names = {term: info["name"] for term, info in json.loads((shared / SOURCES["go_names"]).read_text()).items()}
    rows = read_csv(shared / SOURCES["synapse_table"])
    proteomes: dict[str, list[str]] = {}
    entry_accession: dict[str, str] = {}
    for row in rows:
        acc = row["uniprot_accession"].strip()
        sets = [s for s in row["proteomics_sets"].split(";") if s]
        for name in sets:
            if not (name.startswith(PROTEOME_INHIBITORY_PREFIXES + PROTEOME_SUPPORTING_PREFIXES)
                    or name in PROTEOME_EXCITATORY):
                raise SystemExit(f"{SOURCES['synapse_table']}: unknown proteome set {name!r}")
        if sets:
            proteomes[acc] = sorted(sets)
        entry = row["protgps_entry"].strip()
        if entry and not accessions_of(entry):
            entry_accession[entry] = acc
    by_symbol: dict[str, set[str]] = defaultdict(set)
    for row in read_csv(shared / SOURCES["human_names"]):
        by_symbol[row["Gene Symbol"].strip()].add(row["Accession"].strip())
    symbols = {symbol: min(accs) for symbol, accs in by_symbol.items() if symbol and len(accs) == 1}
    return SynapseSources(go, names, proteomes, {r["uniprot_accession"].strip() for r in rows},
                          entry_accession, symbols, rows)


def go_evidence(term: str, name: str) -> str:
    return f"{term} {name}"


def synapse_evidence(accessions: list[str], sources: SynapseSources, psd: int | None) -> tuple[dict[str, list[str]], bool]:
    """Evidence per label (and UNTYPED), and whether any accession has GO CC annotations."""
    evidence: dict[str, set[str]] = defaultdict(set)
    annotated = False
    for acc in accessions:
        terms = sources.go.get(acc, [])
        annotated = annotated or bool(terms)
        for term in terms:
            name = sources.go_names.get(term, "")
            if term in GO_EXCITATORY:
                evidence[EXCITATORY].add(go_evidence(term, GO_EXCITATORY[term]))
            elif term in GO_INHIBITORY:
                evidence[INHIBITORY].add(go_evidence(term, GO_INHIBITORY[term]))
            elif term in GO_PSD:
                evidence[EXCITATORY].add(go_evidence(term, GO_PSD[term]))
            elif SYNAPSE_RELATED.search(name) and not NOT_SYNAPSE_RELATED.search(name):
                evidence[UNTYPED].add(go_evidence(term, name))
        for name in sources.proteomes.get(acc, []):
            label = INHIBITORY if name.startswith(PROTEOME_INHIBITORY_PREFIXES) else EXCITATORY
            evidence[label].add(name)
    if psd:
        evidence[EXCITATORY].add(PSD_EVIDENCE)
    return {k: sorted(v) for k, v in sorted(evidence.items())}, annotated


def is_positive_evidence(label: str, source: str) -> bool:
    """Sources that make a positive; the others (PSD terms and fractions, synaptosome and
    PSD-95 BioID proteomes, protGPS's PSD list) only support one."""
    if label == INHIBITORY:
        return True
    term = source.split(" ", 1)[0]
    return term in GO_EXCITATORY or source in PROTEOME_EXCITATORY


def synapse_labels(evidence: dict[str, list[str]], go_annotated: bool, in_synapse_table: bool) -> dict[str, int | None]:
    """The negative rule. Positive on positive evidence; a positive of one type leaves the other
    type unknown; both negative only for a GO-annotated protein with no synapse evidence of any
    kind in any source (``in_synapse_table``: the reference table lists it, e.g. on the 2017
    SynGO export); unknown otherwise. Never 'not on a list' -> negative."""
    positive = {
        label: any(is_positive_evidence(label, s) for s in evidence.get(label, []))
        for label in (EXCITATORY, INHIBITORY)
    }
    if any(positive.values()):
        return {label: 1 if positive[label] else None for label in (EXCITATORY, INHIBITORY)}
    if go_annotated and not evidence and not in_synapse_table:
        return {EXCITATORY: 0, INHIBITORY: 0}
    return {EXCITATORY: None, INHIBITORY: None}


def load(shared: Path, log: Log, sources: SynapseSources) -> list[Protein]:
    by_seq: dict[str, Protein] = {}

    hou_rows = read_csv(shared / SOURCES["hou"])
    for row in hou_rows:
        uid, seq = row["uniprot_id"].strip(), row["sequence"].strip()
        problem = sequence_problem(seq)
        if problem:
            log.dropped.append(("seq2loc HOU", uid, problem))
            continue
        locations = {loc.strip() for loc in row["level2"].split(";") if loc.strip()}
        unknown = locations - HOU_LEVEL2_KNOWN
        if unknown:
            raise SystemExit(f"{uid}: unexpected level2 location(s) {sorted(unknown)}")
        positives = {HOU_LEVEL2[loc] for loc in locations if loc in HOU_LEVEL2}
        if seq in by_seq:
            raise SystemExit(f"{uid}: duplicate sequence inside hou_testset.csv")
        by_seq[seq] = Protein(
            sequence=seq,
            hou_id=uid,
            hou_labels={name: int(name in positives) for name in HOU_LABELS},
        )

    for row in read_csv(shared / SOURCES["protgps"]):
        entry, seq = row["entry"].strip(), row["sequence"].strip()
        problem = sequence_problem(seq)
        if problem:
            log.dropped.append(("protGPS", entry, problem))
            continue
        value = row[PSD_COLUMN].strip()
        if value not in ("0", "1"):
            raise SystemExit(f"{entry}: {PSD_COLUMN} is {value!r}, expected 0 or 1")
        protein = by_seq.setdefault(seq, Protein(sequence=seq))
        protein.protgps_entries.append(entry)
        protein.psd = max(protein.psd or 0, int(value))

    # Same accession, different sequence (sequence versions or isoforms of one protein):
    # keep one record, HOU's sequence, and carry the protGPS evidence over.
    by_accession: dict[str, list[Protein]] = defaultdict(list)
    for protein in by_seq.values():
        names = ([protein.hou_id] if protein.hou_id else []) + protein.protgps_entries
        for acc in sorted({a for name in names for a in accessions_of(name)}):
            by_accession[acc].append(protein)
    for acc, group in sorted(by_accession.items()):
        live = [p for p in group if p.sequence in by_seq]
        if len(live) < 2:
            continue
        keep = [p for p in live if p.hou_id is not None]
        if len(keep) != 1:
            raise SystemExit(f"accession {acc}: {len(live)} sequences and no single HOU row")
        target = keep[0]
        for other in live:
            if other is target:
                continue
            if other.hou_id is not None:
                raise SystemExit(f"accession {acc}: two HOU rows")
            target.protgps_entries.extend(other.protgps_entries)
            target.psd = max(target.psd or 0, other.psd or 0)
            del by_seq[other.sequence]
            log.merged_by_accession.append(
                (acc, [f"{e} ({len(other.sequence)} aa)" for e in other.protgps_entries])
            )

    # hou.fasta: sequences for accessions no labelled source has. An accession that already has
    # a sequence keeps it; an identical sequence adds its accession to that protein.
    known = {
        acc: p
        for p in by_seq.values()
        for name in ([p.hou_id] if p.hou_id else []) + p.protgps_entries
        for acc in accessions_of(name)
    }
    for acc, seq in read_fasta_records(shared / SOURCES["hou_fasta"]):
        if not ACCESSION.fullmatch(acc):
            raise SystemExit(f"{SOURCES['hou_fasta']}: header {acc!r} is not a UniProt accession")
        if acc in known:
            log.fasta_skipped += 1
            if known[acc].sequence != seq:
                log.fasta_skipped_differing.append(acc)
            continue
        problem = sequence_problem(seq)
        if problem:
            log.dropped.append(("seq2loc hou.fasta", acc, problem))
            continue
        protein = by_seq.setdefault(seq, Protein(sequence=seq))
        protein.fasta_ids.append(acc)
        known[acc] = protein

    proteins = []
    for protein in by_seq.values():
        accs = {a for name in protein_names(protein) for a in sources.lookup(name)}
        protein.accessions = sorted(accs)
        if not accs:
            log.no_accession += 1
        protein.evidence, annotated = synapse_evidence(protein.accessions, sources, protein.psd)
        in_table = any(a in sources.in_table for a in protein.accessions)
        protein.synapse = synapse_labels(protein.evidence, annotated, in_table)
        if all(value is None for value in protein.labels().values()):
            # Nothing to train or score on. Kept only when a check needs its sequence (GAPDH,
            # a marker-panel and quick-start protein that no source here labels).
            wanted = set(MARKERS) | set(EXAMPLE_ACCESSIONS)
            origin = "HOU" if protein.hou_id else "protGPS" if protein.protgps_entries else "hou.fasta"
            if not wanted & set(protein.accessions):
                log.no_known_label[origin] += 1
                continue
            log.kept_unlabelled.extend(sorted(wanted & set(protein.accessions)))
        proteins.append(protein)

    for protein in proteins:
        protein.entry = (protein.hou_id or (min(protein.fasta_ids) if protein.fasta_ids else None)
                         or min(protein.protgps_entries, key=entry_rank))
    entries = Counter(p.entry for p in proteins)
    clashes = [e for e, n in entries.items() if n > 1]
    if clashes:
        raise SystemExit(f"entry names used by more than one sequence: {clashes[:10]}")
    proteins.sort(key=lambda p: p.entry)
    return proteins


def protein_names(protein: Protein) -> list[str]:
    return ([protein.hou_id] if protein.hou_id else []) + protein.protgps_entries + protein.fasta_ids


def assign_splits(proteins: list[Protein], method: str, log: Log) -> tuple[str, list[int], list[str]]:
    """Set protein.split; return (method used, group id per protein, command description)."""
    if method == "auto":
        method = "mmseqs" if homology.mmseqs_available() else "exact"
        if method == "exact":
            print(
                "WARNING: mmseqs not found on PATH; falling back to exact-sequence grouping. "
                "The result will NOT match the shipped data/dataset.json "
                "(install it: apt-get install -y mmseqs2).",
                file=sys.stderr,
            )
    if method == "mmseqs":
        options = homology.mmseqs_cluster_options(MIN_SEQ_ID, COVERAGE, THREADS, COV_MODE)
        version = homology.mmseqs_version()
        groups = homology.cluster_sequences(
            [p.sequence for p in proteins], MIN_SEQ_ID, COVERAGE, THREADS, cov_mode=COV_MODE
        )
        command = [
            f"MMseqs2 version {version}:",
            "mmseqs easy-cluster input.fasta result tmp " + " ".join(options),
            "(input.fasta: every protein of dataset.json in entry order, headers s0, s1, ...)",
        ]
    else:
        groups = list(range(len(proteins)))  # sequences are unique after the merge
        command = ["no clustering: each unique sequence is its own group"]
    splits = homology.split_groups(groups, FRACTIONS, SEED)
    # The marker panel is held out: every cluster holding a marker goes to test.
    marker_groups = {}
    for protein, group in zip(proteins, groups):
        for acc in protein.accessions:
            if acc in MARKERS:
                marker_groups[group] = acc
    for group, acc in sorted(marker_groups.items(), key=lambda item: item[1]):
        members = [i for i, g in enumerate(groups) if g == group]
        log.markers_moved.append((acc, splits[members[0]], len(members)))
        for i in members:
            splits[i] = "test"
    for protein, split in zip(proteins, splits):
        protein.split = split
    return method, groups, command


def record(protein: Protein) -> dict:
    out = {
        "entry": protein.entry,
        "sequence": protein.sequence,
        "labels": protein.labels(),
        "split": protein.split,
    }
    if protein.evidence:
        out["evidence"] = protein.evidence
    return out


def dump_records(records: list[dict]) -> str:
    """A JSON list with one record per line: valid JSON, and diffs stay line-sized."""
    lines = [json.dumps(r, ensure_ascii=True) for r in records]
    return "[\n" + ",\n".join(lines) + "\n]\n"


def select_small(proteins: list[Protein]) -> list[Protein]:
    """A deterministic subset: per split, at least N positives, negatives and unknowns of every
    label, then filled up in sha256(sequence) order."""
    chosen: list[Protein] = []
    for split, size in SMALL_PER_SPLIT.items():
        pool = sorted(
            (p for p in proteins if p.split == split and len(p.sequence) <= SMALL_MAX_LENGTH),
            key=lambda p: hashlib.sha256(p.sequence.encode()).hexdigest(),
        )
        picked: list[Protein] = []
        need = SMALL_MIN_EACH[split]
        for name in LABELS:
            for value in (1, 0, None):
                have = sum(p.labels()[name] == value for p in picked)
                for p in pool:
                    if have >= need:
                        break
                    if p not in picked and p.labels()[name] == value:
                        picked.append(p)
                        have += 1
                if have < need:
                    raise SystemExit(f"small set: not enough {name}={value} in {split}")
        for p in pool:
            if len(picked) >= size:
                break
            if p not in picked:
                picked.append(p)
        if len(picked) > size:
            raise SystemExit(f"small set: quotas need {len(picked)} > {size} proteins in {split}")
        chosen.extend(picked)
    return sorted(chosen, key=lambda p: p.entry)


def example_fasta(proteins: list[Protein], shared: Path) -> str:
    genes = {}
    for row in read_csv(shared / SOURCES["opencell"]):
        genes.setdefault(row["uniprot_id"].strip(), row["target_name"].strip())
    by_entry = {p.entry: p for p in proteins}
    out = []
    for acc in EXAMPLE_ACCESSIONS:
        protein = by_entry.get(acc)
        if protein is None:
            raise SystemExit(f"example protein {acc} is not in the dataset")
        labels = protein.labels()
        positives = [name for name in LABELS if labels[name] == 1] or ["none"]
        header = " ".join(
            [acc]
            + ([genes[acc]] if acc in genes else [])
            + [f"dataset labels: {', '.join(positives)}; split: {protein.split}"]
        )
        seq = protein.sequence
        out.append(f">{header}\n" + "".join(seq[i : i + 60] + "\n" for i in range(0, len(seq), 60)))
    return "".join(out)


def counts_table(proteins: list[Protein]) -> list[str]:
    splits = ("all", "train", "dev", "test")
    rows = ["| label | " + " | ".join(f"{s} +/-/?" for s in splits) + " |"]
    rows.append("|---|" + "---|" * len(splits))
    for name in LABELS:
        cells = []
        for split in splits:
            values = Counter(
                p.labels()[name] for p in proteins if split == "all" or p.split == split
            )
            cells.append(f"{values[1]:,} / {values[0]:,} / {values[None]:,}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def evidence_table(proteins: list[Protein]) -> list[str]:
    """Synapse positives by kind of evidence: GO only, proteome only, both."""
    rows = ["| label | positives | GO terms only | proteomes only | both | with supporting evidence too |",
            "|---|---:|---:|---:|---:|---:|"]
    for label in (EXCITATORY, INHIBITORY):
        kinds: Counter = Counter()
        supported = 0
        for p in proteins:
            if p.synapse.get(label) != 1:
                continue
            strong = [s for s in p.evidence.get(label, []) if is_positive_evidence(label, s)]
            go = any(s.startswith("GO:") for s in strong)
            proteome = any(not s.startswith("GO:") for s in strong)
            kinds["both" if go and proteome else "GO" if go else "proteome"] += 1
            supported += any(not is_positive_evidence(label, s) for s in p.evidence.get(label, []))
        total = sum(kinds.values())
        rows.append(f"| {label} | {total:,} | {kinds['GO']:,} | {kinds['proteome']:,} | "
                    f"{kinds['both']:,} | {supported:,} |")
    return rows


def null_reasons(proteins: list[Protein], sources: SynapseSources) -> list[str]:
    """Why synapse labels are unknown, for proteins with neither synapse positive."""
    reasons: Counter = Counter()
    for p in proteins:
        if p.synapse[EXCITATORY] is not None or p.synapse[INHIBITORY] is not None:
            continue
        if not p.accessions:
            reasons["no UniProt accession to look up"] += 1
        elif not any(sources.go.get(a) for a in p.accessions):
            reasons["no GO cellular-component annotation"] += 1
        elif p.evidence.get(EXCITATORY):
            reasons["excitatory supporting evidence only (PSD terms or proteomes, synaptosome, "
                    "PSD-95 BioID, protGPS PSD list)"] += 1
        elif p.evidence.get(UNTYPED):
            reasons["synapse-related GO terms without a type"] += 1
        else:
            reasons["listed in the reference table only (e.g. the 2017 SynGO export)"] += 1
    return [f"  - {why}: {n:,}" for why, n in reasons.most_common()]


def reference_agreement(proteins: list[Protein], sources: SynapseSources) -> list[str]:
    """Our synapse labels against synapse_labels_human.csv, on the accessions we both have."""
    table = {r["uniprot_accession"].strip(): r for r in sources.table_rows}
    rows = [("| our label | reference column | both 1 | ours 1, ref 0 | ours null, ref 1 | "
             "ours 0, ref 1 | ref 1, protein here |"),
            "|---|---|---:|---:|---:|---:|---:|"]
    for label, column in ((INHIBITORY, "INHIBITORY_label"), (EXCITATORY, "EXCITATORY_label_strict"),
                          (EXCITATORY, "EXCITATORY_label_broad")):
        counts: Counter = Counter()
        for p in proteins:
            refs = [table[a][column] == "1" for a in p.accessions if a in table]
            ref = any(refs)
            ours = p.synapse[label]
            if ref:
                counts["ref"] += 1
            if ours == 1 and ref:
                counts["both"] += 1
            elif ours == 1:
                counts["ours only"] += 1
            elif ref and ours is None:
                counts["null"] += 1
            elif ref and ours == 0:
                counts["neg"] += 1
        rows.append(f"| {label} | `{column}` | {counts['both']:,} | {counts['ours only']:,} | "
                    f"{counts['null']:,} | {counts['neg']:,} | {counts['ref']:,} |")
    return rows


def proteome_coverage(shared: Path, sources: SynapseSources) -> list[str]:
    """Mouse genes per proteome set (GMT) against the human accessions the table maps them to."""
    mapped = Counter(s for sets in sources.proteomes.values() for s in sets)
    rows = ["| proteome set | mouse genes (GMT) | human accessions (table) |", "|---|---:|---:|"]
    for key, prefix in GMT_SET_PREFIX.items():
        for name, members in read_gmt(shared / SOURCES[key]).items():
            rows.append(f"| `{prefix}{name}` | {len(members):,} | {mapped[prefix + name]:,} |")
    return rows


def generated_section(
    proteins: list[Protein],
    small: list[Protein],
    shared: Path,
    log: Log,
    method: str,
    groups: list[int],
    command: list[str],
    sources: SynapseSources,
) -> str:
    n = len(proteins)
    split_sizes = Counter(p.split for p in proteins)
    origins = Counter(
        " + ".join(name for name, present in (("HOU", p.hou_id), ("protGPS", p.protgps_entries),
                                              ("hou.fasta", p.fasta_ids)) if present)
        for p in proteins
    )
    group_sizes = Counter(groups)
    size_hist = Counter(group_sizes.values())
    largest = sorted(group_sizes.values(), reverse=True)[:5]
    lines = [BEGIN_MARK, "", "### Inputs", ""]
    lines += ["| file | sha256 |", "|---|---|"]
    for rel in SOURCES.values():
        lines.append(f"| `{rel}` | `{sha256(shared / rel)}` |")
    lines += ["", "### Records", ""]
    lines.append(f"- Proteins (unique sequences): **{n:,}**; by source: "
                 + ", ".join(f"{k} {v:,}" for k, v in sorted(origins.items())) + ".")
    with_evidence = sum(1 for p in proteins if p.evidence)
    lines.append(f"- Records with an `evidence` field: {with_evidence:,}.")
    merged_pg = sum(len(p.protgps_entries) - 1 for p in proteins if len(p.protgps_entries) > 1)
    lines.append(f"- protGPS rows folded into another protGPS row with the same sequence or "
                 f"accession: {merged_pg:,}.")
    lines.append("- Same accession, different sequence (HOU sequence kept, protGPS evidence "
                 "carried over): " + "; ".join(f"{acc} <- {', '.join(e)}"
                                               for acc, e in log.merged_by_accession) + ".")
    lines.append(f"- hou.fasta records whose accession already had a sequence (skipped): "
                 f"{log.fasta_skipped:,}, of them with a different sequence: "
                 f"{len(log.fasta_skipped_differing)} ({', '.join(log.fasta_skipped_differing)}).")
    lines.append(f"- Proteins with no UniProt accession to look synapse evidence up by "
                 f"(protGPS entry names that neither the reference table nor a unique gene "
                 f"symbol maps): {log.no_accession:,}.")
    lines.append("- Left out because every label is unknown: " + ", ".join(
        f"{origin} {count:,}" for origin, count in sorted(log.no_known_label.items()))
        + "; kept although every label is unknown, for the marker panel and the quick start: "
        + ", ".join(log.kept_unlabelled) + ".")
    lines.append(f"- Dropped rows ({len(log.dropped)}):")
    lines += ["", "| source | entry | reason |", "|---|---|---|"]
    lines += [f"| {src} | {entry} | {why} |" for src, entry, why in log.dropped]
    lines += ["", "### Labels: positives / negatives / unknown (null)", ""]
    lines += counts_table(proteins)
    lines += ["", "### Synapse positives by evidence", ""]
    lines += evidence_table(proteins)
    lines += ["", "Proteins with both synapse labels unknown, by reason:", ""]
    lines += null_reasons(proteins, sources)
    lines += ["", "### Agreement with `synapse/synapse_labels_human.csv`", ""]
    lines += reference_agreement(proteins, sources)
    lines += ["", ("Proteome sets: mouse genes in the GMT file against human accessions in the "
                   "reference table's `proteomics_sets` column (the mapping this build uses):"), ""]
    lines += proteome_coverage(shared, sources)
    lines += ["", "### Splits", ""]
    lines.append(f"- Method: **{method}**" + (
        " (homology-aware: whole MMseqs2 clusters per split)" if method == "mmseqs"
        else " (exact-sequence groups only: NOT homology-aware)"))
    lines.append("- Command: " + " ".join(f"`{c}`" if c.startswith("mmseqs ") else c
                                          for c in command))
    lines.append(f"- Groups: {len(group_sizes):,}; singletons {size_hist[1]:,}; "
                 f"largest {', '.join(str(s) for s in largest)}.")
    lines.append(f"- Assignment: `synnav_cli.data.homology.split_groups(groups, {FRACTIONS}, "
                 f"seed={SEED})`, then every cluster holding a marker-panel protein is moved to "
                 "test: " + "; ".join(f"{MARKERS[acc][0]} ({acc}, cluster of {size}, from {was})"
                                      for acc, was, size in log.markers_moved) + ".")
    lines.append("- Sizes: " + ", ".join(
        f"{s} {split_sizes[s]:,} ({split_sizes[s] / n:.1%})" for s in homology.SPLIT_NAMES) + ".")
    small_sizes = Counter(p.split for p in small)
    lines.append(f"- `tests/data/small.json`: {len(small)} proteins of at most "
                 f"{SMALL_MAX_LENGTH} residues (" + ", ".join(
                     f"{s} {small_sizes[s]}" for s in homology.SPLIT_NAMES) + ").")
    lines += ["", END_MARK]
    return "\n".join(lines)


def replace_generated(readme: str, section: str) -> str:
    start, end = readme.find(BEGIN_MARK), readme.find(END_MARK)
    if start < 0 or end < start:
        raise SystemExit("data/README.md lacks the GENERATED markers")
    return readme[:start] + section + readme[end + len(END_MARK) :]


def add_go_compartments(proteins: list[Protein], sources: SynapseSources, rule: str,
                        shipped: Path) -> list[str]:
    """Lower-confidence GO-derived compartment labels for the training proteins HOU does not
    label, with the splits of the shipped file (the test set must stay the same for measuring);
    returns a count table. Dev and test keep HOU's labels only, so that whatever is chosen on dev
    (a network's best epoch, thresholds) and every test figure rest on HOU. Only proteins
    already in the dataset: new ones would need clustering against the test set."""
    go_compartments.check_names(sources.go_names)
    split_of = {r["entry"]: r["split"] for r in json.loads(shipped.read_text())}
    if set(split_of) != {p.entry for p in proteins}:
        raise SystemExit(f"{shipped} does not hold the proteins this build makes: rebuild it first")
    added: Counter = Counter()
    for protein in proteins:
        protein.split = split_of[protein.entry]
        if protein.hou_labels is not None:
            continue
        terms = {t for a in protein.accessions for t in sources.go.get(a, [])}
        labels, evidence = go_compartments.compartment_labels(terms, sources.go_names, rule)
        for name, value in labels.items():
            added[name, value, protein.split] += 1
        if protein.split == "train":
            protein.go_labels = labels
            protein.evidence = dict(sorted({**protein.evidence, **evidence}.items()))
    rows = ["| label | train: added +/- | dev, test: would be +/- (left unknown) |",
            "|---|---:|---:|"]
    for name in go_compartments.COMPARTMENTS:
        held = [sum(added[name, v, s] for s in ("dev", "test")) for v in (1, 0)]
        rows.append(f"| {name} | {added[name, 1, 'train']:,} / {added[name, 0, 'train']:,} | "
                    f"{held[0]:,} / {held[1]:,} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "shared", nargs="?", type=Path, default=REPO.parent / "shared" / "data",
        help="folder with seq2loc_hou/, protgps/ and synapse/ (default: ../shared/data from the repo root)",
    )  # fmt: skip
    parser.add_argument(
        "--split-method", choices=("auto", "mmseqs", "exact"), default="auto",
        help="mmseqs: homology clusters (needs mmseqs); exact: identical sequences only; "
        "auto: mmseqs if installed, else exact with a warning (default: auto)",
    )  # fmt: skip
    parser.add_argument(
        "--check", action="store_true",
        help="build in memory and exit 1 if any output differs from the file on disk",
    )  # fmt: skip
    parser.add_argument(
        "--go-compartments", nargs="?", const="located", choices=go_compartments.RULES,
        help="write a variant with lower-confidence GO-derived compartment labels for training "
        "proteins HOU does not label, to --out only (default rule: located; see "
        "scripts/go_compartments.py)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="output file for --go-compartments")
    args = parser.parse_args(argv)
    if args.go_compartments and (args.out is None or args.check):
        parser.error("--go-compartments needs --out and does not combine with --check")
    shared = args.shared.resolve()
    started = time.monotonic()

    for key, rel in SOURCES.items():
        path = shared / rel
        if not path.is_file():
            raise SystemExit(f"missing input {path}")
        digest = sha256(path)
        if digest != EXPECTED_SHA256[key]:
            print(f"WARNING: {rel} has sha256 {digest}, not the recorded "
                  f"{EXPECTED_SHA256[key]}; the output will differ", file=sys.stderr)

    log = Log()
    sources = load_synapse_sources(shared)
    proteins = load(shared, log, sources)
    if args.go_compartments:
        # No clustering, no other output: the shipped files stay as they are.
        table = add_go_compartments(proteins, sources, args.go_compartments,
                                    REPO / "data" / "dataset.json")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dump_records([record(p) for p in proteins]))
        print(f"GO-derived compartment labels added (rule {args.go_compartments}), "
              "positives / negatives:")
        print("\n".join(table))
        print("\n".join(counts_table(proteins)))
        print(f"wrote {args.out} in {time.monotonic() - started:.1f} s")
        return 0
    method, groups, command = assign_splits(proteins, args.split_method, log)
    print(f"split method: {method}")
    small = select_small(proteins)

    readme_path = REPO / "data" / "README.md"
    outputs = {
        REPO / "data" / "dataset.json": dump_records([record(p) for p in proteins]),
        REPO / "data" / "example.fasta": example_fasta(proteins, shared),
        REPO / "tests" / "data" / "small.json": dump_records([record(p) for p in small]),
        readme_path: replace_generated(
            readme_path.read_text(),
            generated_section(proteins, small, shared, log, method, groups, command, sources),
        ),
    }
    differ = []
    for path, text in outputs.items():
        if args.check:
            if not path.is_file() or path.read_text() != text:
                differ.append(path)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    split_sizes = Counter(p.split for p in proteins)
    print(f"proteins: {len(proteins)} ({', '.join(f'{s} {split_sizes[s]}' for s in homology.SPLIT_NAMES)})")
    print(f"dropped rows: {len(log.dropped)}")
    print("\n".join(counts_table(proteins)))
    print("\n".join(reference_agreement(proteins, sources)))
    for path, text in outputs.items():
        digest = hashlib.sha256(text.encode()).hexdigest()
        print(f"{digest}  {path.relative_to(REPO)} ({len(text.encode()):,} bytes)")
    print(f"done in {time.monotonic() - started:.1f} s")
    if differ:
        print("differs from disk: " + ", ".join(str(p.relative_to(REPO)) for p in differ),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
