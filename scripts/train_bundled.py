#!/usr/bin/env python3
"""Train the bundled aacnn model: data/dataset.json plus shuffled decoys, counts-calibrated thresholds.

Three steps, each through synnav's public functions:

1. Training data: every record of data/dataset.json as it is, plus, for each training protein, a
   decoy: its residues shuffled (seeded), all six labels 0, split ``train``. A model that sees
   only real proteins learns amino-acid composition as a shortcut and calls shuffled sequences
   as often as real ones; the decoys make composition alone no evidence. Decoys never enter dev
   or test, so every reported metric is on real proteins.
2. ``synnav train`` on that file (the options after ``--`` are passed through).
3. Thresholds: each label's cut-off is set on dev so that the model calls the label exactly as
   often as it is true among the dev proteins where it is known ("calibrated counts"). Dev-F1
   thresholds call common labels far too often (2.3 labels a protein where the truth is about
   one); matching counts keeps label cardinality close to the truth. Every split's metrics are
   recomputed at the new thresholds and the model directory is rewritten with them.

Usage (from the repository root):
    python scripts/train_bundled.py --out OUT [--decoys 1.0] -- --epochs 8 --lr 3e-3 ...
    python scripts/train_bundled.py --calibrate-only --out OUT   # step 3 on a trained model
    python scripts/train_bundled.py --out OUT --install "COMMAND"  # copy OUT into the package

``--install`` copies the model directory to src/synnav_cli/bundled/model/, with the data path
made relative, the decoys recorded, and the description ``synnav predict`` prints.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
DATASET = REPO / "data" / "dataset.json"
DECOY_PREFIX = "decoy-shuffled-"
DECOY_SEED = 0
BUNDLED = REPO / "src" / "synnav_cli" / "bundled" / "model"


SYNAPSE_LABELS = ("excitatory synapse", "inhibitory synapse")


def decoy_records(records: list[dict], fraction: float, seed: int = DECOY_SEED,
                  labels: str = "all") -> list[dict]:
    """Shuffled copies of a seeded ``fraction`` of the training records, labelled 0 (``all``), or
    0 for the compartments and unknown for the synapse labels (``compartments``)."""
    rng = np.random.default_rng(seed)
    train = [r for r in records if r["split"] == "train"]
    chosen = sorted(rng.choice(len(train), size=round(fraction * len(train)), replace=False))
    names = list(records[0]["labels"])
    return [
        {
            "entry": DECOY_PREFIX + train[i]["entry"],
            "sequence": "".join(rng.permutation(list(train[i]["sequence"]))),
            "labels": {n: None if labels == "compartments" and n in SYNAPSE_LABELS else 0 for n in names},
            "split": "train",
        }
        for i in chosen
    ]


def counts_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The cut-off at which as many known proteins are called as are positive."""
    known = ~np.isnan(y)
    y, p = y[known], p[known]
    positives = int(y.sum())
    if positives == 0 or positives == y.size:
        return 0.5
    ranked = np.sort(p)[::-1]
    # Halfway between the last called and the first uncalled score.
    return float((ranked[positives - 1] + ranked[positives]) / 2)


def calibrate(model_dir: Path, data: Path) -> dict:
    """Set counts-calibrated thresholds on dev and rewrite the metrics at them."""
    from synnav_cli.evaluate import evaluate_with_scores
    from synnav_cli.metrics import evaluate_predictions
    from synnav_cli.modeldir import read_model_info

    info = read_model_info(model_dir)
    scores = {}
    for split in ("train", "dev", "test"):
        _, scores[split] = evaluate_with_scores(info, data, split=split, device="cpu", offline=True)
    dev = scores["dev"]
    thresholds = [round(counts_threshold(dev.labels[:, j], dev.probabilities[:, j]), 6)
                  for j in range(len(info.label_names))]
    meta_path = model_dir / "synnav-model.json"
    meta = json.loads(meta_path.read_text())
    meta["thresholds"] = dict(zip(info.label_names, thresholds))
    meta["threshold_metric"] = "counts"
    meta["threshold_rule"] = ("calibrated counts: on dev, each label is called exactly as often as "
                              "it is true among the proteins where it is known")
    for split, part in scores.items():
        meta["metrics"][split] = evaluate_predictions(part.labels, part.probabilities,
                                                      info.label_names, thresholds)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def install(model_dir: Path, data: Path, command: str) -> Path:
    """Copy a trained, calibrated model directory into the package as the bundled model."""
    sys.path.insert(0, str(REPO / "src"))
    from synnav_cli.data.dataset import read_dataset

    meta = json.loads((model_dir / "synnav-model.json").read_text())
    dataset = read_dataset(data)
    real = meta["data"]["proteins"]
    counts = {s: dataset.splits.count(s) for s in ("train", "dev", "test")}
    decoys = real["train"] - counts["train"]
    params = sum(p.numel() for p in _state(model_dir).values())
    meta["data"].update({
        "path": "data/dataset.json",
        "decoys": {"train": decoys, "seed": DECOY_SEED, "made_by": "scripts/train_bundled.py"},
        "source_sha256": dataset.content_hash(),
        "source_split_sha256": dataset.split_hash(),
    })
    meta["command"] = command
    if meta["backbone"] == "aacnn-ensemble":
        meta["description"] = (
            f"aacnn-ensemble: three small CNNs ({params / 1e6:.1f}M parameters in all) trained "
            f"from scratch on data/dataset.json ({counts['train']:,} training proteins and as "
            "many shuffled decoys) and a logistic regression on length, composition and "
            "hydrophobic segments; far less accurate than a fine-tuned ESM C model"
        )
    else:
        meta["description"] = (
            f"aacnn, a {params / 1e6:.1f}M-parameter CNN trained from scratch on data/dataset.json "
            f"({counts['train']:,} training proteins and as many shuffled decoys); far less accurate "
            "than a fine-tuned ESM C model"
        )
    if BUNDLED.exists():
        shutil.rmtree(BUNDLED)
    BUNDLED.mkdir(parents=True)
    shutil.copy2(model_dir / "model.safetensors", BUNDLED / "model.safetensors")
    (BUNDLED / "synnav-model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return BUNDLED


def _state(model_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to create")
    parser.add_argument("--data", type=Path, default=DATASET)
    parser.add_argument("--decoys", type=float, default=1.0,
                        help="decoys per training protein (0 for none) [default: 1.0]")
    parser.add_argument("--decoy-labels", choices=("all", "compartments"), default="all",
                        help="decoys are 0 for every label, or for the four compartments only "
                        "(synapse labels unknown) [default: all]")
    parser.add_argument("--calibrate-only", action="store_true",
                        help="only set the thresholds of an already trained --out")
    parser.add_argument("--install", metavar="COMMAND",
                        help="copy --out into the package as the bundled model; COMMAND is the "
                        "training command to record")
    parser.add_argument("train_args", nargs="*", help="options for synnav train (after --)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.install:
        print(f"installed {install(args.out, args.data, args.install)}")
        return 0

    if not args.calibrate_only:
        records = json.loads(args.data.read_text())
        decoys = decoy_records(records, args.decoys, labels=args.decoy_labels) if args.decoys > 0 else []
        train_file = args.out.with_name(args.out.name + ".train.json")
        train_file.parent.mkdir(parents=True, exist_ok=True)
        train_file.write_text(json.dumps(records + decoys))
        command = ["synnav", "train", "--backbone", "aacnn", "--data", str(train_file),
                   "--out", str(args.out), "--offline", *args.train_args]
        print("$ " + shlex.join(command), flush=True)
        started = time.monotonic()
        subprocess.run(command, check=True)
        print(f"synnav train: {time.monotonic() - started:.0f} s wall-clock", flush=True)
    meta = calibrate(args.out, args.data)
    for split in ("dev", "test"):
        m = meta["metrics"][split]
        print(f"{split}: mean ROC-AUC {m['mean']['roc_auc']:.3f}, mean F1 {m['mean']['f1']:.3f}; " + ", ".join(
            f"{name} {v['roc_auc']:.3f}" for name, v in m["labels"].items()))
    print("thresholds: " + ", ".join(f"{k} {v:.3f}" for k, v in meta["thresholds"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
