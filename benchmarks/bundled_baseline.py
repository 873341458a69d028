#!/usr/bin/env python3
"""Compare the bundled model with amino-acid-composition baselines on one test split.

The baselines are per-label logistic regressions (one-vs-rest, fitted on the proteins whose
label is known) over

* AAC: the frequencies of the 20 standard amino acids;
* AAC+DPC: those plus the 400 dipeptide frequencies.

Both see exactly the proteins the bundled model was trained, tuned and tested on: the split is
the dataset's own, or re-derived with the model's seed, and its hash is checked against the one
the model recorded. Each baseline's regularisation strength is chosen on dev (mean ROC-AUC) and
each label's decision threshold is tuned on dev to maximise F1, as ``synnav train`` does for its
models. The bundled model is scored with ``synnav_cli.evaluate.evaluate``.

Usage (from the repository root):
    python benchmarks/bundled_baseline.py [--data data/dataset.json] [--model PATH]

Prints a markdown table of ROC-AUC and F1 per label and their means; exits 1 when the model
does not beat the composition baseline on mean ROC-AUC.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from itertools import product
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from synnav_cli.data.dataset import assign_splits, read_dataset
from synnav_cli.evaluate import evaluate
from synnav_cli.metrics import evaluate_predictions, tune_threshold
from synnav_cli.modeldir import read_model_info
from synnav_cli.resources import bundled_model_path

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}
C_GRID = (0.01, 0.1, 1.0, 10.0)


def composition(sequence: str) -> np.ndarray:
    counts = np.zeros(20)
    for residue in sequence:
        j = _INDEX.get(residue)
        if j is not None:
            counts[j] += 1
    return counts / max(1.0, counts.sum())


def dipeptides(sequence: str) -> np.ndarray:
    counts = np.zeros(400)
    for a, b in zip(sequence, sequence[1:]):
        i, j = _INDEX.get(a), _INDEX.get(b)
        if i is not None and j is not None:
            counts[20 * i + j] += 1
    return counts / max(1.0, counts.sum())


FEATURES = {
    "AAC": lambda s: composition(s),
    "AAC+DPC": lambda s: np.concatenate([composition(s), dipeptides(s)]),
}


def fit_label(x_train, y_train, c: float):
    known = ~np.isnan(y_train)
    y = y_train[known].astype(int)
    if y.size == 0 or y.min() == y.max():
        return None  # nothing to learn: no positives (or no negatives) in training
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=3000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x_train[known], y)
    return model


def predict_labels(models, x: np.ndarray) -> np.ndarray:
    out = np.full((len(x), len(models)), 0.5)
    for j, model in enumerate(models):
        if model is not None:
            out[:, j] = model.predict_proba(x)[:, 1]
    return out


def mean_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    values = []
    for j in range(labels.shape[1]):
        known = ~np.isnan(labels[:, j])
        y = labels[known, j]
        if 0 < y.sum() < y.size:
            values.append(roc_auc_score(y, probs[known, j]))
    return float(np.mean(values)) if values else float("nan")


def baseline(name: str, parts: dict, label_names: list[str]) -> dict:
    """Fit on train, choose C and thresholds on dev, score test."""
    featurise = FEATURES[name]
    x = {split: np.stack([featurise(s) for s in part.sequences]) for split, part in parts.items()}
    best = None
    for c in C_GRID:
        models = [fit_label(x["train"], parts["train"].labels[:, j], c) for j in range(len(label_names))]
        score = mean_auc(parts["dev"].labels, predict_labels(models, x["dev"]))
        if best is None or score > best[0]:
            best = (score, c, models)
    _, c, models = best
    dev = predict_labels(models, x["dev"])
    thresholds = [tune_threshold(parts["dev"].labels[:, j], dev[:, j], "f1") for j in range(len(label_names))]
    result = evaluate_predictions(parts["test"].labels, predict_labels(models, x["test"]), label_names, thresholds)
    result["C"] = c
    return result


def _cell(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/dataset.json"))
    parser.add_argument("--model", type=Path, default=None, help="model directory [default: the bundled model]")
    args = parser.parse_args()

    model_path = args.model or bundled_model_path()
    if model_path is None:
        print("no bundled model in this installation; pass --model", file=sys.stderr)
        return 2
    info = read_model_info(Path(model_path))
    seed = int(info.meta.get("config", {}).get("seed", 0))
    dataset = assign_splits(read_dataset(args.data), seed=seed)
    # A model trained on the dataset plus decoys (scripts/train_bundled.py) records the split of
    # the dataset itself as source_split_sha256.
    recorded = info.meta.get("data", {}).get("source_split_sha256") or info.meta.get("data", {}).get("split_sha256")
    if recorded and recorded != dataset.split_hash():
        print(f"warning: the split of {args.data} differs from the one {model_path} was trained on",
              file=sys.stderr)
    parts = {split: dataset.subset(split) for split in ("train", "dev", "test")}
    labels = info.label_names
    columns = [dataset.label_names.index(name) for name in labels]
    for part in parts.values():
        part.labels = part.labels[:, columns]
        part.label_names = labels

    results = {}
    for name in FEATURES:
        started = time.monotonic()
        results[name] = baseline(name, parts, labels)
        print(f"{name}: C={results[name]['C']}, {time.monotonic() - started:.1f}s", file=sys.stderr)
    started = time.monotonic()
    results["bundled"] = evaluate(info, args.data, split="test", device="cpu", offline=True)
    print(f"bundled model: {time.monotonic() - started:.1f}s", file=sys.stderr)

    test = parts["test"].labels
    print(f"Test split of {args.data}: {len(parts['test'])} proteins "
          f"(train {len(parts['train'])}, dev {len(parts['dev'])}); model {model_path}\n")
    names = list(results)
    header = ["label", "test pos/known"] + [f"{n} {m}" for n, m in product(names, ("ROC-AUC", "F1"))]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|")
    for j, label in enumerate(labels):
        known = ~np.isnan(test[:, j])
        cells = [label, f"{int(test[known, j].sum())}/{int(known.sum())}"]
        for n, metric in product(names, ("roc_auc", "f1")):
            cells.append(_cell(results[n]["labels"][label][metric]))
        print("| " + " | ".join(cells) + " |")
    cells = ["**mean**", ""] + [_cell(results[n]["mean"][m]) for n, m in product(names, ("roc_auc", "f1"))]
    print("| " + " | ".join(cells) + " |")
    print("\nMeans are over the labels with both classes in the test split (ROC-AUC) or any known "
          "value (F1).")

    model_auc = results["bundled"]["mean"]["roc_auc"]
    composition_auc = results["AAC"]["mean"]["roc_auc"]
    beats = model_auc is not None and composition_auc is not None and model_auc > composition_auc
    print(f"\nbundled mean ROC-AUC {_cell(model_auc)} vs AAC {_cell(composition_auc)}: "
          f"{'beats' if beats else 'does NOT beat'} the composition baseline")
    return 0 if beats else 1


if __name__ == "__main__":
    sys.exit(main())
