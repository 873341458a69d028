#!/usr/bin/env python3
"""Do GO-derived compartment labels help? Issue 10's optional item, measured both ways.

Figures for the "GO-derived compartment labels" section of data/README.md. Variants are built
by ``scripts/build_dataset.py --go-compartments RULE --out FILE``: data/dataset.json plus
lower-confidence cytosol/ER/mitochondrion/nucleus labels for training proteins HOU does not
label, with the same splits. Every score here is on HOU labels only: they are read from
data/dataset.json, where all four compartment labels come from HOU, never from a variant.

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


def fit_and_score(x: dict, train_y: np.ndarray, hou: dict, kind: str) -> tuple[list, np.ndarray]:
    """(dev, test) ROC-AUC on HOU labels per compartment, and the test scores [proteins, 4];
    per label the candidate with the best dev ROC-AUC wins."""
    out, test_scores = [], np.zeros(hou["test"].shape)
    for j in range(len(LABELS)):
        known = ~np.isnan(train_y[:, j])
        best = None
        for model in candidates(kind):
            model.fit(x["train"][known], train_y[known, j])
            scores = {s: model.predict_proba(x[s])[:, 1] for s in ("dev", "test")}
            aucs = [auc(hou[s][:, j], scores[s]) for s in ("dev", "test")]
            if best is None or aucs[0] > best[0]:
                best, test_scores[:, j] = aucs, scores["test"]
        out.append(tuple(best))
    return out, test_scores


def auc(y: np.ndarray, p: np.ndarray) -> float:
    known = ~np.isnan(y)
    return roc_auc_score(y[known], p[known])


def bootstrap_gain(y: np.ndarray, base: np.ndarray, other: np.ndarray, rounds: int = 1000) -> str:
    """95% interval of the test mean ROC-AUC gain of ``other`` over ``base``, resampling test
    proteins (the same resample for both): is a difference of 0.01 more than noise?"""
    rng = np.random.default_rng(0)
    gains = []
    for _ in range(rounds):
        i = rng.integers(0, len(y), len(y))
        gains.append(np.mean([auc(y[i, j], other[i, j]) - auc(y[i, j], base[i, j])
                              for j in range(len(LABELS))]))
    low, high = np.percentile(gains, [2.5, 97.5])
    return f"{low:+.3f} to {high:+.3f}"


def model_scores(model: Path, data: Path, test_entries: list[str]) -> tuple[list, np.ndarray]:
    """A trained model's (dev, test) ROC-AUC per compartment on the shipped file's labels, and
    its test scores [proteins, 4] in the file's order."""
    from synnav_cli.evaluate import evaluate_with_scores
    from synnav_cli.modeldir import read_model_info

    info = read_model_info(model)
    aucs, probabilities = [], {}
    for split in ("dev", "test"):
        _, scores = evaluate_with_scores(info, data, split=split, device="cpu", offline=True)
        columns = [scores.label_names.index(name) for name in LABELS]
        probabilities[split] = scores.probabilities[:, columns]
        if split == "test" and list(scores.entries) != test_entries:
            raise SystemExit(f"{model}: test proteins not in the order of {data}")
        aucs.append([auc(scores.labels[:, j], scores.probabilities[:, j]) for j in columns])
    return list(zip(*aucs)), probabilities["test"]


def print_row(name: str, kind: str, aucs: list, scores: np.ndarray, base: np.ndarray | None,
              y: np.ndarray) -> np.ndarray:
    """One table row, with the test gain over ``base`` (None: this row is the reference);
    returns the reference for the next rows."""
    gain = "(reference)" if base is None else bootstrap_gain(y, base, scores)
    dev, test = np.mean([a[0] for a in aucs]), np.mean([a[1] for a in aucs])
    print(f"| {name} | {kind} | {dev:.3f} | {test:.3f} | {gain} | "
          + " | ".join(f"{a[1]:.3f}" for a in aucs) + " |", flush=True)
    return scores if base is None else base


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
    entries_of = {s: [e for e, split in zip(entries, splits) if split == s] for s in SPLITS}

    print("GO rule against HOU, HOU-labelled train + dev proteins:\n")
    print("\n".join(agreement(shipped, args.shared)))

    header = ("| training labels | model | dev mean | test mean | test gain, 95% | "
              + " | ".join(LABELS) + " (test) |\n|---|---|---:|---:|---:|" + "---:|" * len(LABELS))
    print("\nROC-AUC on HOU labels only:\n\n" + header)
    if args.variants:
        features = descriptors([r["sequence"] for r in shipped])
        x = {s: features[splits == s] for s in SPLITS}
        for kind in ("logistic regression", "boosted trees"):
            base = None
            for path in [args.data, *args.variants]:
                labels = label_matrix(path, entries)
                clash = ~np.isnan(hou_all) & (labels != hou_all)
                if clash.any():
                    raise SystemExit(f"{path}: changes {int(clash.sum())} HOU labels")
                aucs, scores = fit_and_score(x, labels[splits == "train"], hou, kind)
                base = print_row(path.name, kind, aucs, scores, base, hou["test"])
    # Networks: the first model is the reference, as data/dataset.json is for the rows above.
    base = None
    for model in args.models:
        aucs, scores = model_scores(model, args.data, entries_of["test"])
        base = print_row(model.name, "aacnn network", aucs, scores, base, hou["test"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
