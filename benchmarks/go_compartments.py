#!/usr/bin/env python3
"""Do GO-derived compartment labels help? Issue 10's optional item, measured both ways.

Figures for the "GO-derived compartment labels" section of data/README.md. Variants are built
by ``scripts/build_dataset.py --go-compartments RULE --out FILE``: data/dataset.json plus
lower-confidence cytosol/ER/mitochondrion/nucleus labels for proteins HOU does not label, with
the same splits. Every score here is on HOU labels only: they are read from data/dataset.json,
where all four compartment labels come from HOU, never from a variant.

1. ``agreement``: the GO rule against HOU on HOU's train and dev proteins (how noisy GO's
   positives and negatives are by HOU's standard; test is left alone).
2. ``descriptors``: the models of descriptor_baselines.py (logistic regression and boosted
   trees on aacnn's global descriptors), trained on data/dataset.json and on each variant,
   hyper-parameters chosen on dev (HOU labels), ROC-AUC on dev and test (HOU labels).
3. ``--models``: trained synnav models (e.g. scripts/train_bundled.py on each file), scored on
   data/dataset.json's dev and test splits, so again on HOU labels only.

Usage (from the repository root):
    python benchmarks/go_compartments.py --variants go-located.json ... [--models DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from descriptor_baselines import candidates, descriptors
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import go_compartments  # noqa: E402  (scripts/ holds the rule the builder uses)

from synnav_cli.data.dataset import read_dataset  # noqa: E402

LABELS = go_compartments.COMPARTMENTS
SPLITS = ("train", "dev", "test")


def label_matrix(path: Path, entries: list[str]) -> np.ndarray:
    """[proteins, 4] compartment labels (NaN unknown) of a file, in the shipped file's order."""
    dataset = read_dataset(path)
    if list(dataset.entries) != entries:
        raise SystemExit(f"{path}: not the shipped proteins in the shipped order")
    columns = [dataset.label_names.index(name) for name in LABELS]
    return np.asarray(dataset.labels, dtype=float)[:, columns]


def agreement(shipped: list[dict], shared: Path) -> list[str]:
    """GO-derived values against HOU's on HOU-labelled train and dev proteins."""
    go = json.loads((shared / "synapse/go/associations_CC.json").read_text())
    terms = json.loads((shared / "synapse/go/cc_ic.json").read_text())
    names = {term: info["name"] for term, info in terms.items()}
    hou = [r for r in shipped if r["labels"]["cytosol"] is not None and r["split"] != "test"]
    rows = ["| rule | label | GO 1 | of them HOU 1 | GO 0 | of them HOU 0 | HOU 1 found by GO |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for rule in ("located", "any"):
        values = [go_compartments.compartment_labels(set(go.get(r["entry"], [])), names, rule)[0]
                  for r in hou]
        for label in LABELS:
            pairs = [(v[label], r["labels"][label]) for v, r in zip(values, hou)]
            pos = [h for g, h in pairs if g == 1]
            neg = [h for g, h in pairs if g == 0]
            truth = sum(h for _, h in pairs)
            rows.append(f"| {rule} | {label} | {len(pos):,} | {np.mean(pos):.2f} | {len(neg):,} | "
                        f"{1 - np.mean(neg):.2f} | {sum(pos) / truth:.2f} |")
    return rows


def fit_and_score(x: dict, train_y: np.ndarray, hou: dict, kind: str) -> list[tuple[float, float]]:
    """(dev, test) ROC-AUC on HOU labels per compartment; the model with the best dev wins."""
    out = []
    for j in range(len(LABELS)):
        known = ~np.isnan(train_y[:, j])
        best = None
        for model in candidates(kind):
            model.fit(x["train"][known], train_y[known, j])
            aucs = []
            for split in ("dev", "test"):
                mask = ~np.isnan(hou[split][:, j])
                scores = model.predict_proba(x[split][mask])[:, 1]
                aucs.append(roc_auc_score(hou[split][mask, j], scores))
            if best is None or aucs[0] > best[0]:
                best = aucs
        out.append(tuple(best))
    return out


def model_scores(model: Path, data: Path) -> list[tuple[float, float]]:
    """A trained model's (dev, test) ROC-AUC per compartment on the shipped file's labels."""
    from synnav_cli.evaluate import evaluate_with_scores
    from synnav_cli.modeldir import read_model_info

    info = read_model_info(model)
    per_split = {}
    for split in ("dev", "test"):
        _, scores = evaluate_with_scores(info, data, split=split, device="cpu", offline=True)
        per_split[split] = []
        for name in LABELS:
            j = scores.label_names.index(name)
            mask = ~np.isnan(scores.labels[:, j])
            per_split[split].append(
                roc_auc_score(scores.labels[mask, j], scores.probabilities[mask, j])
            )
    return list(zip(per_split["dev"], per_split["test"]))


def table_row(name: str, kind: str, aucs: list[tuple[float, float]]) -> str:
    dev, test = np.mean([a[0] for a in aucs]), np.mean([a[1] for a in aucs])
    return (f"| {name} | {kind} | {dev:.3f} | {test:.3f} | "
            + " | ".join(f"{a[1]:.3f}" for a in aucs) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dataset.json")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--variants", type=Path, nargs="*", default=[],
                        help="files from build_dataset.py --go-compartments")
    parser.add_argument("--models", type=Path, nargs="*", default=[],
                        help="trained synnav model directories to score on --data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    shipped = json.loads(args.data.read_text())
    entries = [r["entry"] for r in shipped]
    splits = np.array([r["split"] for r in shipped])
    hou_all = label_matrix(args.data, entries)
    hou = {s: hou_all[splits == s] for s in SPLITS}

    print("GO rule against HOU, HOU-labelled train + dev proteins:\n")
    print("\n".join(agreement(shipped, args.shared)))

    header = ("| training labels | model | dev mean | test mean | " + " | ".join(LABELS)
              + " (test) |\n|---|---|---:|---:|" + "---:|" * len(LABELS))
    print("\nROC-AUC on HOU labels only:\n\n" + header)
    if args.variants:
        features = descriptors([r["sequence"] for r in shipped])
        x = {s: features[splits == s] for s in SPLITS}
        for kind in ("logistic regression", "boosted trees"):
            for path in [args.data, *args.variants]:
                labels = label_matrix(path, entries)
                clash = ~np.isnan(hou_all) & (labels != hou_all)
                if clash.any():
                    raise SystemExit(f"{path}: changes {int(clash.sum())} HOU labels")
                aucs = fit_and_score(x, labels[splits == "train"], hou, kind)
                print(table_row(path.name, kind, aucs), flush=True)
    for model in args.models:
        print(table_row(model.name, "aacnn network", model_scores(model, args.data)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
