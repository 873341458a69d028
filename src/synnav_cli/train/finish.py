"""The end of a run: thresholds tuned on dev, every split scored, the model directory written."""

from __future__ import annotations

import platform
import shutil
import sys
from dataclasses import asdict
from datetime import datetime, timezone

import numpy as np
import torch

from synnav_cli import __version__, console
from synnav_cli.calibration import fit_calibration
from synnav_cli.metrics import evaluate_predictions, tune_threshold
from synnav_cli.model import LocalizationModel
from synnav_cli.modeldir import save_model_dir
from synnav_cli.runtime import distributed
from synnav_cli.train.domain_index import index_training_proteins
from synnav_cli.train.setup import RunSetup, TrainResult


def finish(
    setup: RunSetup,
    model: LocalizationModel,
    probabilities: dict[str, np.ndarray],
    best_epoch: int,
    history: list[dict],
    pooled: dict[str, np.ndarray] | None = None,
) -> TrainResult:
    """Tune thresholds on dev, score every split, write the model directory, drop the workspace.

    ``probabilities`` holds the best epoch's scores of each non-empty split; ``pooled``, the
    splits' pooled embeddings when the run has them (a frozen backbone), for the domain index.
    """
    label_names = setup.dataset.label_names
    unseen = unlearned_labels(setup.parts["train"].labels)
    if unseen:
        names = ", ".join(label_names[j] for j in unseen)
        console.warn(
            f"no known value of {names} in the training split: the model cannot learn it; "
            "it will give every protein 0.5 and never predict it"
        )
        blank_labels(model, unseen)
        probabilities = {name: p.copy() for name, p in probabilities.items()}
        for p in probabilities.values():
            p[:, unseen] = 0.5
    thresholds = [
        NEVER
        if j in unseen
        else tune_threshold(
            setup.parts["dev"].labels[:, j],
            probabilities["dev"][:, j],
            setup.config.threshold_metric,
        )
        for j in range(len(label_names))
    ]
    metrics = {
        name: evaluate_predictions(setup.parts[name].labels, p, label_names, thresholds)
        for name, p in probabilities.items()
    }
    meta = _metadata(setup, thresholds, metrics, best_epoch, history)
    # Calibrated probabilities, fitted on the same dev scores; calls stay at the raw thresholds.
    calibration, dev_ece = fit_calibration(
        setup.parts["dev"].labels, probabilities["dev"], label_names, skip=tuple(unseen)
    )
    meta["calibration"] = {**calibration.to_meta(dev_ece), "method": "auto"}
    if distributed.is_main():
        save_model_dir(
            setup.out, model, meta, encoder_frozen=setup.config.freeze, force=setup.record["force"]
        )
        # domain.safetensors: predict's domain columns
        index_training_proteins(setup, model, pooled)
        shutil.rmtree(setup.workspace, ignore_errors=True)
    distributed.barrier()
    console.info(f"Saved model to {setup.out} (best epoch {best_epoch}).")
    return TrainResult(setup.out, metrics, best_epoch, history)


NEVER = 1.0  # the threshold of a label the model cannot predict: its probability stays 0.5


def unlearned_labels(train_labels: np.ndarray) -> list[int]:
    """Columns with no known value in the training split: the masked loss never saw them."""
    return [j for j in range(train_labels.shape[1]) if np.isnan(train_labels[:, j]).all()]


def blank_labels(model: LocalizationModel, columns: list[int]) -> None:
    """Make the head give exactly 0.5 for ``columns``, whatever the protein.

    An untrained head row keeps its random initialisation, so its scores are noise that reads
    like a prediction (and about half the proteins would cross a 0.5 threshold). Zero weights
    and bias say "no information" the same way for every protein.
    """
    with torch.no_grad():
        model.head.linear.weight[columns] = 0.0
        model.head.linear.bias[columns] = 0.0


def _metadata(
    setup: RunSetup, thresholds: list[float], metrics: dict, best_epoch: int, history: list[dict]
) -> dict:
    config, backbone, dataset = setup.config, setup.backbone, setup.dataset
    return {
        "backbone": backbone.id,
        "backbone_fingerprint": backbone.fingerprint(),
        "labels": dataset.label_names,
        "thresholds": dict(zip(dataset.label_names, [round(t, 6) for t in thresholds])),
        "threshold_metric": config.threshold_metric,
        "metrics": metrics,
        "best_epoch": best_epoch,
        "history": history,
        "config": asdict(config),
        "pos_weight": dict(
            zip(dataset.label_names, [round(float(w), 4) for w in setup.pos_weight])
        ),
        "data": {
            "path": str(setup.record["data"]),
            "sha256": dataset.content_hash(),
            "split_sha256": dataset.split_hash(),
            "proteins": {s: dataset.splits.count(s) for s in ("train", "dev", "test")},
            "label_counts": dataset.label_counts(),
        },
        "trained_on": {"device": str(setup.device), "precision": setup.precision},
        "versions": {
            "synnav": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
