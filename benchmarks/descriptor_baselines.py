#!/usr/bin/env python3
"""How far do global descriptors alone go? Reference figures for docs/bundled-model.md.

Per-label models on the descriptors ``aacnn`` computes (``GlobalFeatures``: log length,
composition of the whole protein and of its ends, hydrophobic segments), or on subsets of them,
fitted on the training split of data/dataset.json (real proteins, sequences cut to 800 residues
as the bundled model sees them), hyper-parameters chosen per label on dev, ROC-AUC on dev and
test:

* ``composition``: whole-protein composition only (the AAC baseline of bundled_baseline.py);
* ``composition+length``: plus log length;
* ``all``: every descriptor;

each as a class-balanced logistic regression (C from 0.01 to 10) and, for ``all``, as
gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier, 200 or 400 rounds).

Usage (from the repository root):
    python benchmarks/descriptor_baselines.py [--data data/dataset.json]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synnav_cli.backbones.aacnn import GlobalFeatures, describe_sequences
from synnav_cli.data.dataset import read_dataset

LIMIT = 800
# Column ranges of GlobalFeatures' output.
SUBSETS = {
    "composition": list(range(0, 20)),
    "composition+length": list(range(0, 20)) + [60],
    "all": list(range(GlobalFeatures.size)),
}


def candidates(kind: str):
    if kind == "logistic regression":
        for c in (0.01, 0.1, 1.0, 10.0):
            yield make_pipeline(
                StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
            )
    else:
        for rounds in (200, 400):
            yield HistGradientBoostingClassifier(
                learning_rate=0.05, max_iter=rounds, max_leaf_nodes=15, l2_regularization=1.0,
                class_weight="balanced", random_state=0,
            )  # fmt: skip


def fit_and_score(x: dict, y: dict, kind: str) -> tuple[list[float], list[float]]:
    dev_auc, test_auc = [], []
    for j in range(y["train"].shape[1]):
        known = {split: ~np.isnan(y[split][:, j]) for split in y}
        best = None
        for model in candidates(kind):
            model.fit(x["train"][known["train"]], y["train"][known["train"], j])
            scores = {s: model.predict_proba(x[s][known[s]])[:, 1] for s in ("dev", "test")}
            aucs = {s: roc_auc_score(y[s][known[s], j], scores[s]) for s in scores}
            if best is None or aucs["dev"] > best["dev"]:
                best = aucs
        dev_auc.append(best["dev"])
        test_auc.append(best["test"])
    return dev_auc, test_auc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/dataset.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    dataset = read_dataset(args.data)
    splits = np.array(dataset.splits)
    everything = describe_sequences(list(dataset.sequences), LIMIT)
    labels = np.asarray(dataset.labels, dtype=float)
    y = {s: labels[splits == s] for s in ("train", "dev", "test")}
    names = dataset.label_names
    print("| descriptors | model | dev mean | test mean | " + " | ".join(names) + " (test) |")
    print("|---|---|---:|---:|" + "---:|" * len(names))
    runs = [(subset, "logistic regression") for subset in SUBSETS] + [("all", "boosted trees")]
    for subset, kind in runs:
        x = {s: everything[splits == s][:, SUBSETS[subset]] for s in y}
        dev_auc, test_auc = fit_and_score(x, y, kind)
        cells = " | ".join(f"{a:.3f}" for a in test_auc)
        print(f"| {subset} | {kind} | {np.mean(dev_auc):.3f} | {np.mean(test_auc):.3f} | {cells} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
