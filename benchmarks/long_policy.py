#!/usr/bin/env python3
"""Which `--long` policy serves proteins longer than a model takes?

Takes the labelled proteins of one split longer than the model's maximum (800 residues for the
bundled model) and scores them, side by side in one run, four ways with one model:

* ``truncate``: the N-terminal residues up to the maximum (``--long truncate``);
* ``window``: overlapping windows, each residue's vector counted once, one mean for the head
  (``--long window``, synnav's pooling since 2026-12-03);
* ``window-probabilities``: the same windows with their probabilities averaged (synnav's
  ``--long window`` before 2026-12-03), for comparison;
* ``whole``: the whole protein, where the backbone takes it (aacnn takes 2,000 residues although
  the bundled model was trained on 800): not a policy, an upper reference.

Prints per label and policy ROC-AUC and F1 (at the model's thresholds) against the dataset's
labels, then the calls: labels called, and proteins given no call at all. With ``--fasta`` it
also counts the calls on that file's proteins over the maximum (no labels needed).

Usage (from the repository root):
    python benchmarks/long_policy.py [--model bundled] [--data data/dataset.json] [--split test]
        [--fasta /work/shared/data/seq2loc_hou/hou.fasta]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from synnav_cli.data.dataset import assign_splits, read_dataset
from synnav_cli.data.fasta import FastaRecord, read_fasta
from synnav_cli.metrics import label_metrics
from synnav_cli.predict.run import predict_records
from synnav_cli.scoring.load import load_for_scoring
from synnav_cli.scoring.score import score_sequences
from synnav_cli.scoring.windows import plan_windows

POLICIES = ("truncate", "window", "window-probabilities", "whole")


def _score(loaded, sequences: list[str], policy: str) -> np.ndarray:
    if policy == "window-probabilities":
        windows = [plan_windows(s, loaded.max_length) for s in sequences]
        flat = [w.sequence for group in windows for w in group]
        probabilities = score_sequences(loaded.model, loaded.backbone, flat, loaded.runtime)
        ends = np.cumsum([len(group) for group in windows])
        return np.stack([probabilities[e - len(g) : e].mean(axis=0) for e, g in zip(ends, windows)])
    limit = loaded.backbone.max_length if policy == "whole" else loaded.max_length
    records = [FastaRecord(f"p{i}", "", sequence) for i, sequence in enumerate(sequences)]
    rows = predict_records(
        loaded.model,
        loaded.backbone,
        records,
        loaded.runtime,
        max_length=limit,
        long_policy="truncate" if policy == "whole" else policy,
    )
    return np.stack([row.probabilities for row in rows])


def _calls(loaded, scored: dict[str, np.ndarray]) -> str:
    thresholds = np.asarray(loaded.thresholds)
    parts = []
    for policy, probabilities in scored.items():
        called = probabilities >= thresholds
        parts.append(
            f"{policy}: {int(called.sum())} labels called, "
            f"{int((~called.any(axis=1)).sum())} proteins with none"
        )
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--data", type=Path, default=Path("data/dataset.json"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--fasta", type=Path, help="also count calls on this file's long proteins")
    args = parser.parse_args(argv)

    loaded = load_for_scoring(args.model, device="cpu")
    limit, reach = loaded.max_length, loaded.backbone.max_length
    dataset = assign_splits(
        read_dataset(args.data), seed=int(loaded.info.meta.get("config", {}).get("seed", 0))
    )
    label_names = loaded.info.label_names
    columns = [dataset.label_names.index(name) for name in label_names]
    chosen = [
        i
        for i, (split, sequence) in enumerate(zip(dataset.splits, dataset.sequences))
        if split == args.split and len(sequence) > limit
    ]
    if not chosen:
        print(f"no {args.split} protein over {limit} residues", file=sys.stderr)
        return 1
    sequences = [dataset.sequences[i] for i in chosen]
    labels = dataset.labels[chosen][:, columns]
    started = time.perf_counter()
    scored = {policy: _score(loaded, sequences, policy) for policy in POLICIES if policy != "whole"}
    inside = np.array([len(s) <= reach for s in sequences])
    whole = _score(loaded, [s for s in sequences if len(s) <= reach], "whole")
    elapsed = time.perf_counter() - started

    lengths = np.array([len(s) for s in sequences])
    print(
        f"model {loaded.info.name} ({loaded.info.meta['backbone']}, maximum {limit}), "
        f"{args.split} split of {args.data}: {len(chosen)} proteins over {limit} residues "
        f"(median {int(np.median(lengths))}, {int(inside.sum())} within the backbone's {reach} "
        f"for `whole`); scored in {elapsed:.1f} s\n"
    )
    header = " | ".join(f"{p} ROC-AUC | {p} F1" for p in POLICIES)
    print(f"| label | known | {header} |")
    print("|---|---|" + "---|" * (2 * len(POLICIES)))
    means: dict[str, list] = {key: [] for key in POLICIES}
    for j, name in enumerate(label_names):
        cells = []
        for policy in POLICIES:
            y, p = (
                (labels[inside, j], whole[:, j])
                if policy == "whole"
                else (labels[:, j], scored[policy][:, j])
            )
            m = label_metrics(y, p, loaded.thresholds[j])
            means[policy].append((m["roc_auc"], m["f1"]))
            cells.append(
                f"{m['roc_auc'] if m['roc_auc'] is not None else float('nan'):.3f} | "
                f"{m['f1'] if m['f1'] is not None else float('nan'):.3f}"
            )
        known = int((~np.isnan(labels[:, j])).sum())
        print(f"| {name} | {known} | " + " | ".join(cells) + " |")
    summary = []
    for policy in POLICIES:
        aucs = [a for a, _ in means[policy] if a is not None]
        f1s = [f for _, f in means[policy] if f is not None]
        summary.append(f"{np.mean(aucs):.3f} | {np.mean(f1s):.3f}")
    print("| mean | | " + " | ".join(summary) + " |\n")
    print("Calls on these proteins: " + _calls(loaded, scored))
    if args.fasta is not None:
        long = [r.sequence for r in read_fasta(str(args.fasta)) if len(r.sequence) > limit]
        fasta_scored = {policy: _score(loaded, long, policy) for policy in POLICIES[:3]}
        print(
            f"\nCalls on the {len(long)} proteins of {args.fasta} over {limit} residues: "
            + _calls(loaded, fasta_scored)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
