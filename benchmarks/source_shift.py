#!/usr/bin/env python3
"""A model on labels from another source: OpenCell-only proteins, beside nothing it trained on.

data/dataset.json's compartment labels are HOU's consensus (HPA, OpenCell and Swiss-Prot
agreeing), and its dev and test splits share that labelling. This check scores a model on the
OpenCell targets (``/work/shared/data/seq2loc_hou/opencell_raw.csv``, live-cell imaging of
endogenously tagged proteins) that are neither in data/dataset.json nor in HOU's set (by
accession or sequence): other proteins, labelled by one imaging source alone. OpenCell
reports every location it sees, so a compartment it does not list is a negative; synapse labels
are unknown. ``level2`` maps as for HOU: cytosol, endoplasmic-reticulum -> ER, mitochondria ->
mitochondrion, nucleus (nucleoli counted as nucleus).

Prints per-label ROC-AUC and the expected calibration error of the model's scores (ece_raw) and
of the probabilities predict writes (ece), as ``synnav evaluate`` computes them.

``shifted_records()`` imports without torch (the model code loads in ``main`` only):
scripts/build_shift_set.py puts these proteins, half in dev and half in test, into
data/shift.json beside GO-labelled dataset proteins that HOU does not label. This script
scores all of them together, as before.

Usage (from the repository root):
    python benchmarks/source_shift.py [--model bundled] [--out results.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/data/seq2loc_hou")
LEVEL2 = {
    "cytosol": "cytosol",
    "endoplasmic-reticulum": "ER",
    "mitochondria": "mitochondrion",
    "nucleus": "nucleus",
    "nucleoli": "nucleus",
}
COMPARTMENTS = ("cytosol", "ER", "mitochondrion", "nucleus")


def shifted_records(shared: Path = SHARED, dataset: Path = REPO / "data" / "dataset.json") -> list:
    """OpenCell targets absent from ``dataset`` and from HOU's set, with OpenCell's labels."""
    known = json.loads(dataset.read_text())
    seen_ids = {r["entry"] for r in known}
    seen_seqs = {r["sequence"] for r in known}
    with (shared / "hou_testset.csv").open() as handle:
        for row in csv.DictReader(handle):
            seen_ids.add(row["uniprot_id"])
            seen_seqs.add(row["sequence"])
    records = []
    with (shared / "opencell_raw.csv").open() as handle:
        for row in csv.DictReader(handle):
            entry, sequence = row["uniprot_id"], row["Sequence"]
            if not entry or entry in seen_ids or sequence in seen_seqs:
                continue
            located = {LEVEL2[name] for name in row["level2"].split(";") if name in LEVEL2}
            labels = {name: int(name in located) for name in COMPARTMENTS}
            records.append({"entry": entry, "sequence": sequence, "labels": labels, "split": "test"})
            seen_ids.add(entry)
            seen_seqs.add(sequence)
    return records


def main() -> None:
    from synnav_cli.evaluate import evaluate_with_scores
    from synnav_cli.modeldir import resolve_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = parser.parse_args()
    records = shifted_records()
    info, _how = resolve_model(args.model)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "opencell-only.json"
        path.write_text(json.dumps(records))
        result, _scores = evaluate_with_scores(info, path, split="test", device="cpu")
    print(f"OpenCell-only proteins: {len(records)}")
    print("| label | positives/known | ROC-AUC | ECE of scores | ECE calibrated |")
    print("|---|---|---:|---:|---:|")
    for name in COMPARTMENTS:
        m = result["labels"][name]
        cells = [m.get(k) for k in ("roc_auc", "ece_raw", "ece")]
        shown = ["n/a" if v is None else f"{v:.3f}" for v in cells]
        print(f"| {name} | {m['support']}/{m['known']} | " + " | ".join(shown) + " |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
