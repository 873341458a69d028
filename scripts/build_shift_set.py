#!/usr/bin/env python3
"""Build data/shift.json: dev and test proteins whose compartment labels come from other sources.

data/dataset.json's cytosol, ER, mitochondrion and nucleus labels are all HOU's consensus (HPA,
OpenCell and Swiss-Prot agreeing), in dev and test as in train, so its test figures say nothing
about labels from another source. This set holds proteins labelled otherwise, split into dev
and test, so that a model is chosen on dev (+ shift dev) and reported on test (+ shift test):

- GO (``"source": "GO-CC located rule"``): the dev and test proteins of data/dataset.json that
  HOU does not label (all four compartments unknown there), labelled by the GO rule ``located``
  of scripts/go_compartments.py, as ``scripts/build_dataset.py --go-compartments`` labels the
  training ones (the same accessions and GO files; each value's GO terms in ``evidence``). Each
  keeps its split in data/dataset.json; a protein the rule leaves all unknown is left out.
- OpenCell (``"source": "OpenCell level2"``): benchmarks/source_shift.py's ``shifted_records()``,
  OpenCell targets in neither data/dataset.json nor HOU's set (by accession or sequence), with
  OpenCell's own ``level2`` labels. They belong to no split of the dataset: one goes to dev when
  the first byte of sha256(entry) is even, to test when it is odd.

Synapse labels are null throughout: the set measures the compartments only. Records are in
data/dataset.json's format and read with ``synnav evaluate --data``/``read_dataset``; GO records
first (in data/dataset.json's order), then OpenCell ones (in opencell_raw.csv's order).

Reads (under SHARED, default ../shared/data relative to the repository root) what
scripts/build_dataset.py reads to place accessions and GO terms, plus data/dataset.json and
seq2loc_hou/opencell_raw.csv. Writes OUT (default data/shift.json) through a temporary file in
the same folder; prints counts per source, split and label on stderr.

Usage (from the repository root):
    python scripts/build_shift_set.py [SHARED] [--out data/shift.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

# From scripts/ and benchmarks/ (the sys.path lines above): the builder, the GO rule, OpenCell.
import build_dataset
import go_compartments
import source_shift

DATASET = REPO / "data" / "dataset.json"
LABELS = build_dataset.LABELS  # the six names of data/dataset.json, in its order
COMPARTMENTS = go_compartments.COMPARTMENTS
SPLITS = ("dev", "test")
RULE = "located"
GO_SOURCE = "GO-CC located rule"
OPENCELL_SOURCE = "OpenCell level2"
# The shared files behind the accessions, GO terms and OpenCell labels used here.
INPUTS = (
    "hou",
    "hou_fasta",
    "opencell",
    "protgps",
    "go",
    "go_names",
    "synapse_table",
    "human_names",
)


def shift_record(
    entry: str,
    sequence: str,
    compartments: dict,
    split: str,
    source: str,
    evidence: dict | None = None,
) -> dict:
    labels = {name: compartments.get(name) if name in COMPARTMENTS else None for name in LABELS}
    out = {"entry": entry, "sequence": sequence, "labels": labels, "split": split, "source": source}
    if evidence:
        out["evidence"] = dict(sorted(evidence.items()))
    return out


def opencell_split(entry: str) -> str:
    """dev or test, by the parity of the first byte of sha256(entry): fixed, about half each."""
    return SPLITS[hashlib.sha256(entry.encode()).digest()[0] % 2]


def build(shared: Path, dataset: Path = DATASET) -> list[dict]:
    """The records of the shift set (GO part, then OpenCell part)."""
    sources = build_dataset.load_synapse_sources(shared)
    go_compartments.check_names(sources.go_names)
    proteins = {p.entry: p for p in build_dataset.load(shared, build_dataset.Log(), sources)}
    shipped = json.loads(dataset.read_text())
    if {r["entry"] for r in shipped} != set(proteins):
        raise SystemExit(
            f"{dataset} does not hold the proteins scripts/build_dataset.py makes "
            "from these inputs: rebuild it first"
        )

    records = []
    for row in shipped:
        if row["split"] not in SPLITS or any(
            row["labels"].get(n) is not None for n in COMPARTMENTS
        ):
            continue
        protein = proteins[row["entry"]]
        terms = {t for a in protein.accessions for t in sources.go.get(a, [])}
        labels, evidence = go_compartments.compartment_labels(terms, sources.go_names, RULE)
        if all(value is None for value in labels.values()):
            continue
        records.append(
            shift_record(row["entry"], row["sequence"], labels, row["split"], GO_SOURCE, evidence)
        )

    # shifted_records() compares entry names and sequences; an accession that data/dataset.json
    # holds under another entry name would slip through, so check accessions too.
    accessions = {a for p in proteins.values() for a in p.accessions} | set(proteins)
    for row in source_shift.shifted_records(shared / "seq2loc_hou", dataset):
        if row["entry"] in accessions:
            raise SystemExit(f"OpenCell entry {row['entry']} is an accession of data/dataset.json")
        records.append(
            shift_record(
                row["entry"],
                row["sequence"],
                row["labels"],
                opencell_split(row["entry"]),
                OPENCELL_SOURCE,
            )
        )
    return records


def summary(records: list[dict]) -> list[str]:
    """Proteins and positives/known per label, per source and split, then per split."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        groups[r["source"], r["split"]].append(r)
        groups["all", r["split"]].append(r)
        groups[r["source"], "all"].append(r)
        groups["all", "all"].append(r)
    rows = [
        "| source | split | proteins | " + " | ".join(COMPARTMENTS) + " |",
        "|---|---|---:|" + "---:|" * len(COMPARTMENTS),
    ]
    for source in (GO_SOURCE, OPENCELL_SOURCE, "all"):
        for split in (*SPLITS, "all"):
            group = groups.get((source, split), [])
            cells = []
            for name in COMPARTMENTS:
                values = [r["labels"][name] for r in group if r["labels"][name] is not None]
                cells.append(f"{sum(values):,}/{len(values):,}")
            rows.append(f"| {source} | {split} | {len(group):,} | " + " | ".join(cells) + " |")
    return rows


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False, encoding="utf-8"
    ) as handle:
        temporary = Path(handle.name)
        try:
            handle.write(text)
        except BaseException:
            handle.close()
            temporary.unlink(missing_ok=True)
            raise
    try:
        umask = os.umask(0)
        os.umask(umask)
        temporary.chmod(0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "shared",
        nargs="?",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="folder with seq2loc_hou/, protgps/ and synapse/ (default: ../shared/data from the repo root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "data" / "shift.json",
        help="output file (default: data/shift.json)",
    )
    args = parser.parse_args(argv)
    shared = args.shared.resolve()
    for key in INPUTS:
        path = shared / build_dataset.SOURCES[key]
        if not path.is_file():
            raise SystemExit(f"missing input {path}")
        digest = build_dataset.sha256(path)
        if digest != build_dataset.EXPECTED_SHA256[key]:
            print(
                f"WARNING: {build_dataset.SOURCES[key]} has sha256 {digest}, not the recorded "
                f"{build_dataset.EXPECTED_SHA256[key]}; the output will differ",
                file=sys.stderr,
            )

    records = build(shared)
    text = build_dataset.dump_records(records)
    write_atomically(args.out, text)
    print(f"data/dataset.json sha256 {build_dataset.sha256(DATASET)}", file=sys.stderr)
    print("positives/known per label:", file=sys.stderr)
    print("\n".join(summary(records)), file=sys.stderr)
    print(
        f"wrote {args.out} ({len(text.encode()):,} bytes, {len(records):,} proteins)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
