"""Per-label metrics and decision thresholds, computed over known labels only."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    matthews_corrcoef,
    roc_auc_score,
)

from synnav_cli.errors import UserError

THRESHOLD_METRICS = ("f1", "mcc")
METRIC_NAMES = ("f1", "roc_auc", "pr_auc", "mcc", "precision", "recall")
DEFAULT_THRESHOLD = 0.5


@dataclass
class Scores:
    """Per-protein probabilities and known labels of one model on one split (for plots)."""

    label_names: list[str]
    entries: list[str]
    labels: np.ndarray  # [proteins, labels], 1, 0 or NaN (unknown)
    probabilities: np.ndarray  # [proteins, labels]: the model's scores
    thresholds: list[float]
    calibrated: np.ndarray | None = None  # the calibrated probabilities, when the model has them


def _known(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = ~np.isnan(y)
    return y[mask].astype(int), p[mask]


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _score(metric: str, y: np.ndarray, predicted: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if metric == "f1":
            return f1_score(y, predicted, zero_division=0.0)
        return matthews_corrcoef(y, predicted)


def tune_threshold(y: np.ndarray, p: np.ndarray, metric: str = "f1") -> float:
    """The probability cut-off that maximises ``metric`` on (y, p); 0.5 when undecidable."""
    if metric not in THRESHOLD_METRICS:
        raise UserError(f"unknown threshold metric {metric!r}; choose f1 or mcc")
    y, p = _known(y, p)
    if y.size == 0 or y.min() == y.max():
        return DEFAULT_THRESHOLD
    # Candidate cut-offs halfway between consecutive distinct scores, so the chosen value
    # separates the dev set the same way on data that falls between them.
    values = np.unique(p)
    candidates = np.concatenate([[values[0] / 2], (values[:-1] + values[1:]) / 2])
    if len(candidates) > 400:
        candidates = np.quantile(candidates, np.linspace(0, 1, 400))
    scores = [_score(metric, y, (p >= c).astype(int)) for c in candidates]
    return float(candidates[int(np.argmax(scores))])


def label_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float | int | None]:
    y, p = _known(y, p)
    predicted = (p >= threshold).astype(int)
    positives = int(y.sum())
    both_classes = 0 < positives < y.size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = {
            "f1": f1_score(y, predicted, zero_division=0.0) if y.size else math.nan,
            "roc_auc": roc_auc_score(y, p) if both_classes else math.nan,
            "pr_auc": average_precision_score(y, p) if positives else math.nan,
            "mcc": matthews_corrcoef(y, predicted) if y.size else math.nan,
            "precision": (predicted & y).sum() / predicted.sum() if predicted.sum() else math.nan,
            "recall": (predicted & y).sum() / positives if positives else math.nan,
        }
    out: dict[str, float | int | None] = {k: _nan_to_none(v) for k, v in result.items()}
    out["support"] = positives
    out["known"] = int(y.size)
    out["threshold"] = round(float(threshold), 6)
    return out


def evaluate_predictions(
    labels: np.ndarray, probabilities: np.ndarray, label_names: list[str], thresholds: list[float]
) -> dict:
    """``{"labels": {name: metrics}, "mean": {metric: mean over labels where defined}}``."""
    per_label = {
        name: label_metrics(labels[:, j], probabilities[:, j], thresholds[j])
        for j, name in enumerate(label_names)
    }
    mean = {}
    for metric in METRIC_NAMES:
        values = [m[metric] for m in per_label.values() if m[metric] is not None]
        mean[metric] = round(float(np.mean(values)), 6) if values else None
    return {"labels": per_label, "mean": mean}


def selection_score(metrics: dict) -> float:
    """What picks the best epoch: mean ROC-AUC on dev, falling back to mean PR-AUC, then F1."""
    for key in ("roc_auc", "pr_auc", "f1"):
        value = metrics["mean"].get(key)
        if value is not None:
            return value
    return -math.inf
