#!/usr/bin/env python3
"""Which `--long` policy loses least when a protein is longer than the model takes?

Takes the test-split proteins longer than ``--limit`` residues and scores them three ways with
one model:

* ``full``: the whole protein (the model can take it: ``--limit`` is set below the model's own
  maximum on purpose), the reference the policies try to approximate;
* ``truncate``: the N-terminal ``--limit`` residues;
* ``window``: overlapping windows of ``--limit`` residues, probabilities averaged.

Prints, per label, ROC-AUC of each way against the dataset's labels, and the mean absolute
difference of each policy's probabilities from ``full``.

Usage (from the repository root):
    python benchmarks/long_policy.py [--model bundled] [--data data/dataset.json] [--limit 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from synnav_cli.data.dataset import assign_splits, read_dataset
from synnav_cli.data.fasta import FastaRecord
from synnav_cli.predict.run import predict_records
from synnav_cli.scoring.load import load_for_scoring

POLICIES = ("truncate", "window")


def _score(loaded, sequences: list[str], limit: int, policy: str) -> np.ndarray:
    records = [FastaRecord(f"p{i}", "", sequence) for i, sequence in enumerate(sequences)]
    rows = predict_records(loaded.model, loaded.backbone, records, loaded.runtime, max_length=limit,
                           long_policy=policy)
    return np.stack([row.probabilities for row in rows])


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    known = ~np.isnan(y)
    if known.sum() == 0 or len(set(y[known])) < 2:
        return float("nan")
    return float(roc_auc_score(y[known], p[known]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--data", type=Path, default=Path("data/dataset.json"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=400, help="the maximum length the policies work under")
    args = parser.parse_args(argv)

    loaded = load_for_scoring(args.model, device="cpu")
    dataset = assign_splits(read_dataset(args.data), seed=int(loaded.info.meta.get("config", {}).get("seed", 0)))
    label_names = loaded.info.label_names
    columns = [dataset.label_names.index(name) for name in label_names]
    chosen = [i for i, (split, sequence) in enumerate(zip(dataset.splits, dataset.sequences))
              if split == args.split and args.limit < len(sequence) <= loaded.max_length]
    if not chosen:
        print(f"no {args.split} protein between {args.limit} and {loaded.max_length} residues", file=sys.stderr)
        return 1
    sequences = [dataset.sequences[i] for i in chosen]
    labels = dataset.labels[chosen][:, columns]
    started = time.perf_counter()
    full = _score(loaded, sequences, loaded.max_length, "truncate")
    scored = {policy: _score(loaded, sequences, args.limit, policy) for policy in POLICIES}
    elapsed = time.perf_counter() - started

    lengths = np.array([len(s) for s in sequences])
    print(f"model {loaded.info.name} ({loaded.info.meta['backbone']}), {args.split} split of {args.data}: "
          f"{len(chosen)} proteins of {args.limit + 1}-{loaded.max_length} residues "
          f"(median {int(np.median(lengths))}), limit {args.limit}; scored in {elapsed:.1f} s\n")
    print("| label | known | ROC-AUC full | ROC-AUC truncate | ROC-AUC window "
          "| mean abs diff from full: truncate | window |")
    print("|---|---|---|---|---|---|---|")
    means = {name: [] for name in ("full", *POLICIES)}
    for j, name in enumerate(label_names):
        aucs = {"full": _auc(labels[:, j], full[:, j])}
        aucs.update({policy: _auc(labels[:, j], scored[policy][:, j]) for policy in POLICIES})
        for key, value in aucs.items():
            means[key].append(value)
        diffs = [float(np.abs(scored[policy][:, j] - full[:, j]).mean()) for policy in POLICIES]
        known = int((~np.isnan(labels[:, j])).sum())
        print(f"| {name} | {known} | " + " | ".join(f"{aucs[k]:.3f}" for k in ("full", *POLICIES))
              + " | " + " | ".join(f"{d:.3f}" for d in diffs) + " |")
    mean_diffs = [float(np.abs(scored[policy] - full).mean()) for policy in POLICIES]
    print("| mean | | " + " | ".join(f"{np.nanmean(means[k]):.3f}" for k in ("full", *POLICIES))
          + " | " + " | ".join(f"{d:.3f}" for d in mean_diffs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
