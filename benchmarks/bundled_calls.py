#!/usr/bin/env python3
"""Are the bundled model's calls believable? Cardinality, a marker panel, shuffled sequences.

All on the test split of data/dataset.json (homology-aware; the marker proteins' clusters are
held out there), at the model's own thresholds:

* label cardinality: predicted labels per protein beside the true number, (a) on the test
  proteins whose six labels are all known, (b) as the sum over labels of the positive rate among
  the proteins where that label is known, predicted against true;
* marker panel: TOMM20, CALR, LMNA, GAPDH, DLG4, GPHN, GABRA1, GRIA1 (the probability of the
  compartment each one is known for, and what the model calls);
* shuffled sequences: every test protein with its residues shuffled (same composition and
  length, seeded) against the real ones: calls per protein, and the share called anything.

Usage (from the repository root):
    python benchmarks/bundled_calls.py [--data data/dataset.json] [--model PATH] [--split dev]

``--split dev`` measures cardinality and shuffled sequences on dev, for choosing between
candidate models without looking at the test split (the marker panel is always test proteins).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from synnav_cli.data.dataset import read_dataset
from synnav_cli.evaluate import evaluate_with_scores
from synnav_cli.modeldir import load_model, read_model_info
from synnav_cli.plugins import get_backbone
from synnav_cli.resources import bundled_model_path
from synnav_cli.scoring.score import Runtime, score_sequences


def _marker_panel() -> dict[str, tuple[str, str]]:
    """accession -> (gene, the label it is the textbook example of): the panel
    scripts/build_dataset.py holds out in the test split, read from there so the two agree."""
    path = Path(__file__).resolve().parent.parent / "scripts" / "build_dataset.py"
    spec = importlib.util.spec_from_file_location("build_dataset", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return dict(module.MARKERS)


MARKERS = _marker_panel()
SHUFFLE_SEED = 0


def score(info, sequences: list[str]) -> np.ndarray:
    """Probabilities as `synnav predict --long truncate` computes them."""
    backbone = get_backbone(info.meta["backbone"])
    limit = min(int(info.meta.get("config", {}).get("max_length", backbone.max_length)), backbone.max_length)
    model = load_model(info, backbone, torch.device("cpu"), offline=True)
    runtime = Runtime(torch.device("cpu"), "fp32", max(4096, limit + 2))
    return score_sequences(model, backbone, [s[:limit] for s in sequences], runtime)


def shuffled(sequences: list[str], seed: int = SHUFFLE_SEED) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.permutation(list(s))) for s in sequences]


def cardinality(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray) -> dict:
    called = probs >= thresholds
    complete = ~np.isnan(labels).any(axis=1)
    known = ~np.isnan(labels)
    true_rate = [np.nanmean(labels[known[:, j], j]) for j in range(labels.shape[1])]
    called_rate = [called[known[:, j], j].mean() for j in range(labels.shape[1])]
    return {
        "complete": int(complete.sum()),
        "complete_true": float(labels[complete].sum(axis=1).mean()),
        "complete_called": float(called[complete].sum(axis=1).mean()),
        "rate_true": float(np.sum(true_rate)),
        "rate_called": float(np.sum(called_rate)),
        "per_label": list(zip(true_rate, called_rate)),
        "all_called": float(called.sum(axis=1).mean()),
    }


def _print_marker_panel(info, dataset, index: dict, names: list[str], thresholds: np.ndarray) -> None:
    present = [acc for acc in MARKERS if acc in index]
    probs = score(info, [dataset.sequences[index[acc]] for acc in present])
    print("\nMarker panel (all in the test split; probability of the expected label, its threshold, "
          "and every label called):\n")
    print("| protein | split | expected | probability | threshold | called | expected called? |")
    print("|---|---|---|---:|---:|---|---|")
    hits = 0
    for acc, row in zip(present, probs):
        gene, expected = MARKERS[acc]
        j = names.index(expected)
        called = [n for n, p, t in zip(names, row, thresholds) if p >= t]
        hit = expected in called
        hits += hit
        print(f"| {gene} ({acc}) | {dataset.splits[index[acc]]} | {expected} | {row[j]:.3f} | "
              f"{thresholds[j]:.3f} | {', '.join(called) or 'none'} | {'yes' if hit else 'no'} |")
    print(f"\nMarkers called in their compartment: {hits} of {len(present)}.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/dataset.json"))
    parser.add_argument("--model", type=Path, default=None, help="model directory [default: the bundled model]")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    args = parser.parse_args()
    model_path = args.model or bundled_model_path()
    if model_path is None:
        print("no bundled model in this installation; pass --model", file=sys.stderr)
        return 2
    info = read_model_info(Path(model_path))
    names = info.label_names
    thresholds = np.array(info.thresholds)

    _, test = evaluate_with_scores(info, args.data, split=args.split, device="cpu", offline=True)
    card = cardinality(test.labels, test.probabilities, thresholds)
    print(f"Model {model_path}; {args.split} split of {args.data}: {len(test.entries)} proteins.\n")
    print("Thresholds: " + ", ".join(f"{n} {t:.3f}" for n, t in zip(names, thresholds)) + "\n")
    print("Label cardinality (labels per protein):\n")
    print("| measure | true | predicted |")
    print("|---|---:|---:|")
    print(f"| {args.split} proteins with all six labels known ({card['complete']}) | "
          f"{card['complete_true']:.2f} | {card['complete_called']:.2f} |")
    print(f"| sum over labels of the positive rate where the label is known | "
          f"{card['rate_true']:.2f} | {card['rate_called']:.2f} |")
    print(f"| every {args.split} protein ({len(test.entries)}), known or not | n/a | {card['all_called']:.2f} |")
    print("\n| label | true positive rate (known) | predicted positive rate (same proteins) |")
    print("|---|---:|---:|")
    for name, (true, called) in zip(names, card["per_label"]):
        print(f"| {name} | {true:.3f} | {called:.3f} |")

    dataset = read_dataset(args.data)
    index = {entry: i for i, entry in enumerate(dataset.entries)}
    if args.split == "test":  # the markers are test proteins: not shown while choosing on dev
        _print_marker_panel(info, dataset, index, names, thresholds)

    real = test.probabilities
    fake = score(info, shuffled([dataset.sequences[index[e]] for e in test.entries]))
    real_calls, fake_calls = (real >= thresholds).sum(axis=1), (fake >= thresholds).sum(axis=1)
    print(f"\nShuffled sequences (each {args.split} protein's residues permuted, seed 0):\n")
    print("| input | proteins | calls per protein | share with any call | mean top probability |")
    print("|---|---:|---:|---:|---:|")
    for label, calls, p in ((f"real {args.split} proteins", real_calls, real), ("shuffled", fake_calls, fake)):
        print(f"| {label} | {len(calls)} | {calls.mean():.2f} | {(calls > 0).mean():.1%} | "
              f"{p.max(axis=1).mean():.3f} |")
    print(f"\nShuffled sequences get {fake_calls.sum() / max(1, real_calls.sum()):.0%} as many calls "
          "as the real ones.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
