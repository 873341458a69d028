#!/usr/bin/env python3
"""Join three aacnn models and a logistic regression into one aacnn-ensemble model directory.

Input: three model directories made by ``scripts/train_bundled.py`` with the same options and
different ``--seed``s. Steps, every choice made on the dev split only:

1. A per-label logistic regression on aacnn's global descriptors (length, composition of the
   whole protein and of its ends, hydrophobic segments), fitted on the real training proteins
   (no decoys) as the model sees them (cut to its maximum length), with class-balanced weights;
   each label's regularisation strength is the one with the best dev ROC-AUC.
2. The weight of the networks' mean logit against the regression's, from a grid: the best dev
   mean ROC-AUC among the weights at which shuffled dev proteins get at most ``--max-shuffled``
   (default 5%) as many calls as the real ones, at counts-calibrated thresholds.
3. The joined weights (``aacnn_ensemble.ensemble_state``) in ``--out``, then the thresholds and
   every split's metrics as ``train_bundled.py --calibrate-only`` sets them.

Usage (from the repository root):
    python scripts/ensemble_bundled.py --out OUT MODEL_1 MODEL_2 MODEL_3
    python scripts/train_bundled.py --out OUT --install "COMMAND"
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from synnav_cli.backbones.aacnn import describe_sequences
from synnav_cli.backbones.aacnn_ensemble import AACNNEnsembleBackbone, Regression, ensemble_state
from synnav_cli.data.dataset import read_dataset
from synnav_cli.modeldir import load_model, read_model_info
from synnav_cli.plugins import get_backbone

REPO = Path(__file__).resolve().parent.parent
C_GRID = (0.01, 0.1, 1.0, 10.0)
WEIGHT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
BATCH = 32


def _train_bundled():
    spec = importlib.util.spec_from_file_location("train_bundled", REPO / "scripts" / "train_bundled.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.inference_mode()
def network_logits(model_dir: Path, sequences: list[str]) -> np.ndarray:
    """Logits ``[proteins, labels]`` of a trained aacnn model, proteins cut to its maximum."""
    info = read_model_info(model_dir)
    backbone = get_backbone(info.meta["backbone"])
    model = load_model(info, backbone, torch.device("cpu"), offline=True).eval()
    limit = int(info.meta["config"]["max_length"])
    out = np.zeros((len(sequences), len(info.label_names)), dtype=np.float64)
    order = np.argsort([len(s) for s in sequences])
    for start in range(0, len(order), BATCH):
        index = order[start : start + BATCH]
        batch = backbone.tokenize([sequences[i][:limit] for i in index])
        out[index] = model(batch).double().numpy()
    return out


def shuffled(sequences: list[str], seed: int = 0) -> list[str]:
    """Each sequence's residues permuted (same composition and length), seeded."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.permutation(list(s))) for s in sequences]


def fit_regression(x: dict, y: dict) -> tuple[Regression, dict]:
    """Per-label logistic regressions on standardised descriptors; C chosen on dev."""
    scaler = StandardScaler().fit(x["train"])
    z = {split: scaler.transform(values) for split, values in x.items()}
    weights, biases, chosen = [], [], {}
    for j in range(y["train"].shape[1]):
        train, dev = ~np.isnan(y["train"][:, j]), ~np.isnan(y["dev"][:, j])
        best = None
        for c in C_GRID:
            fit = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
            fit.fit(z["train"][train], y["train"][train, j])
            auc = roc_auc_score(y["dev"][dev, j], fit.decision_function(z["dev"][dev]))
            if best is None or auc > best[0]:
                best = (auc, c, fit)
        chosen[j] = best[1]
        weights.append(best[2].coef_[0])
        biases.append(best[2].intercept_[0])
    regression = Regression(
        weight=torch.tensor(np.array(weights)),
        bias=torch.tensor(np.array(biases)),
        mean=torch.tensor(scaler.mean_),
        scale=torch.tensor(scaler.scale_),
    )
    return regression, chosen


def regression_logits(regression: Regression, x: np.ndarray) -> np.ndarray:
    z = (x - regression.mean.numpy()) / regression.scale.numpy()
    return z @ regression.weight.numpy().T + regression.bias.numpy()


def mean_auc(y: np.ndarray, logits: np.ndarray) -> float:
    return float(np.mean([
        roc_auc_score(y[~np.isnan(y[:, j]), j], logits[~np.isnan(y[:, j]), j])
        for j in range(y.shape[1])
    ]))


def shuffled_share(y: np.ndarray, real: np.ndarray, fake: np.ndarray, counts_threshold) -> float:
    """Calls on shuffled proteins over calls on real ones, at counts-calibrated thresholds."""
    cut = np.array([counts_threshold(y[:, j], real[:, j]) for j in range(y.shape[1])])
    return float((fake >= cut).sum() / max(1, (real >= cut).sum()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs=3, help="three trained aacnn model directories")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "dataset.json")
    parser.add_argument("--max-shuffled", type=float, default=0.05)
    args = parser.parse_args()
    torch.set_num_threads(1)
    helpers = _train_bundled()
    if args.out.exists():
        print(f"{args.out} exists; choose a new --out", file=sys.stderr)
        return 2

    dataset = read_dataset(args.data)
    infos = [read_model_info(m) for m in args.models]
    limit = int(infos[0].meta["config"]["max_length"])
    names = infos[0].label_names
    split_of = np.array(dataset.splits)
    seqs = {s: [q for q, t in zip(dataset.sequences, split_of) if t == s] for s in ("train", "dev")}
    y = {s: np.asarray(dataset.labels, dtype=float)[split_of == s] for s in ("train", "dev")}
    x = {s: describe_sequences(seqs[s], limit) for s in ("train", "dev")}
    regression, chosen_c = fit_regression(x, y)

    shuffled_dev = shuffled(seqs["dev"])
    nets_dev = np.mean([network_logits(m, seqs["dev"]) for m in args.models], axis=0)
    nets_fake = np.mean([network_logits(m, shuffled_dev) for m in args.models], axis=0)
    reg_dev = regression_logits(regression, x["dev"])
    reg_fake = regression_logits(regression, describe_sequences(shuffled_dev, limit))
    grid = []
    for w in WEIGHT_GRID:
        real, fake = w * nets_dev + (1 - w) * reg_dev, w * nets_fake + (1 - w) * reg_fake
        grid.append((w, mean_auc(y["dev"], real), shuffled_share(y["dev"], real, fake, helpers.counts_threshold)))
        print(f"network weight {w:.1f}: dev mean ROC-AUC {grid[-1][1]:.4f}, shuffled calls {grid[-1][2]:.1%}")
    allowed = [g for g in grid if g[2] <= args.max_shuffled] or [max(grid, key=lambda g: g[0])]
    weight = max(allowed, key=lambda g: g[1])[0]
    print(f"chosen network weight {weight:.1f}; regression C per label {[chosen_c[j] for j in range(len(names))]}")

    states = [load_file(str(m / "model.safetensors")) for m in args.models]
    args.out.mkdir(parents=True)
    save_file(ensemble_state(states, regression, weight), str(args.out / "model.safetensors"))
    meta = json.loads((args.models[0] / "synnav-model.json").read_text())
    backbone = AACNNEnsembleBackbone()
    meta.update(backbone=backbone.id, backbone_fingerprint=backbone.fingerprint())
    # The first network's training history and best epoch would describe one member only.
    meta.pop("history", None)
    meta.pop("best_epoch", None)
    meta["ensemble"] = {
        "networks": [{"name": m.name, "seed": i.meta["config"].get("seed"),
                      "best_epoch": i.meta.get("best_epoch")} for m, i in zip(args.models, infos)],
        "network_weight": weight,
        "regression": {"features": "aacnn GlobalFeatures", "C": [chosen_c[j] for j in range(len(names))],
                       "class_weight": "balanced", "fitted_on": "real training proteins"},
        "weight_grid_dev": [{"network_weight": w, "mean_roc_auc": a, "shuffled_calls": s} for w, a, s in grid],
        "made_by": "scripts/ensemble_bundled.py",
    }
    (args.out / "synnav-model.json").write_text(json.dumps(meta, indent=2) + "\n")
    meta = helpers.calibrate(args.out, args.data)
    m = meta["metrics"]["dev"]
    print(f"dev: mean ROC-AUC {m['mean']['roc_auc']:.3f}; " + ", ".join(
        f"{n} {v['roc_auc']:.3f}" for n, v in m["labels"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
