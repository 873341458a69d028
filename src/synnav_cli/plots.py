"""Evaluation figures: ROC and precision-recall curves per label, and a per-label metrics bar chart.

matplotlib is the optional extra ``plots``; it is imported only when figures are asked
for, so the core install stays small.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synnav_cli.calibration import expected_calibration_error, reliability_bins
from synnav_cli.errors import UserError
from synnav_cli.metrics import Scores
from synnav_cli.resources import install_hint

BAR_METRICS = ("f1", "roc_auc", "pr_auc", "mcc")


@dataclass
class ModelScores:
    """One evaluated model: its display name, metrics (from ``evaluate``) and raw scores."""

    name: str
    result: dict
    scores: Scores


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a UserError saying how to install it."""
    try:
        import matplotlib
    except ModuleNotFoundError:
        raise UserError(
            "figures need matplotlib, which is not installed; install it with "
            f"{install_hint('plots')}"
        ) from None
    # Agg draws to files only: works on servers without a display and never opens windows.
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def slug(name: str) -> str:
    """A label as it appears in file names: its output column ("excitatory synapse" ->
    "excitatory_synapse", as predict writes it), anything else unsafe in a name as "-"."""
    from synnav_cli.data.dataset import column_name

    return re.sub(r"[^A-Za-z0-9_]+", "-", column_name(name)).strip("-") or "label"


def _known(scores: Scores, column: int) -> tuple[np.ndarray, np.ndarray]:
    y = scores.labels[:, column]
    mask = ~np.isnan(y)
    return y[mask].astype(int), scores.probabilities[mask, column]


def write_plots(models: list[ModelScores], out_dir: Path) -> list[Path]:
    """Write ``roc-<label>.png``, ``pr-<label>.png``, ``reliability-<label>.png`` and
    ``metrics.png`` to ``out_dir``.

    Several models are drawn on the same axes, so one figure compares them. A label whose known
    values are all positive or all negative has no curve; its figure says so.

    Arguments:
        models: evaluated models; all must share the first model's labels.
        out_dir: created when missing; existing figures of the same names are replaced.

    Returns the paths written.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    label_names = models[0].scores.label_names
    written = []
    for label in label_names:
        for kind in ("roc", "pr"):
            figure, axes = plt.subplots(figsize=(4.5, 4.5))
            drawn = False
            for model in models:
                if label not in model.scores.label_names:
                    continue
                y, p = _known(model.scores, model.scores.label_names.index(label))
                if y.size == 0 or y.min() == y.max():
                    continue
                metrics = model.result["labels"][label]
                if kind == "roc":
                    fpr, tpr, _ = roc_curve(y, p)
                    axes.plot(fpr, tpr, label=f"{model.name} (AUC {metrics['roc_auc']:.3f})")
                else:
                    precision, recall, _ = precision_recall_curve(y, p)
                    axes.step(
                        recall,
                        precision,
                        where="post",
                        label=f"{model.name} (AP {metrics['pr_auc']:.3f})",
                    )
                drawn = True
            if kind == "roc":
                axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
                axes.set_xlabel("false positive rate")
                axes.set_ylabel("true positive rate")
                axes.set_title(f"ROC: {label}")
            else:
                axes.set_xlabel("recall")
                axes.set_ylabel("precision")
                axes.set_title(f"Precision-recall: {label}")
            axes.set_xlim(0, 1)
            axes.set_ylim(0, 1.02)
            if drawn:
                axes.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=7)
            else:
                axes.text(
                    0.5,
                    0.5,
                    "no curve: the split holds\nonly one class for this label",
                    ha="center",
                    va="center",
                    transform=axes.transAxes,
                )
            path = out_dir / f"{kind}-{slug(label)}.png"
            figure.tight_layout()
            figure.savefig(path, dpi=120)
            plt.close(figure)
            written.append(path)
    for label in label_names:
        written.append(_reliability(plt, models, label, out_dir / f"reliability-{slug(label)}.png"))
    written.append(_metrics_bars(plt, models, label_names, out_dir / "metrics.png"))
    return written


def _reliability(plt, models: list[ModelScores], label: str, path: Path) -> Path:
    """Share positive against mean probability in ten equal-width bins: the model's scores
    (dashed) and, for a calibrated model, the probabilities predict writes (solid)."""
    figure, axes = plt.subplots(figsize=(4.5, 4.5))
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for model in models:
        if label not in model.scores.label_names:
            continue
        j = model.scores.label_names.index(label)
        y = model.scores.labels[:, j]
        kinds = [("scores", model.scores.probabilities[:, j], "--")]
        if model.scores.calibrated is not None:
            kinds.append(("calibrated", model.scores.calibrated[:, j], "-"))
        for kind, p, style in kinds:
            bins = reliability_bins(y, p)
            if not bins:
                continue
            ece = expected_calibration_error(y, p)
            axes.plot(
                [b[1] for b in bins],
                [b[2] for b in bins],
                style,
                marker="o",
                label=f"{model.name} {kind} (ECE {ece:.3f})",
            )
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("mean probability in bin")
    axes.set_ylabel("share positive in bin")
    axes.set_title(f"Reliability: {label}")
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _metrics_bars(plt, models: list[ModelScores], label_names: list[str], path: Path) -> Path:
    """One panel per metric; one group of bars per label, one bar per model."""
    figure, panels = plt.subplots(
        1, len(BAR_METRICS), figsize=(3.2 * len(BAR_METRICS), 3.8), sharey=True
    )
    x = np.arange(len(label_names))
    width = 0.8 / len(models)
    for panel, metric in zip(panels, BAR_METRICS):
        for k, model in enumerate(models):
            values = [model.result["labels"].get(label, {}).get(metric) for label in label_names]
            heights = [np.nan if v is None else v for v in values]
            panel.bar(x + k * width - 0.4 + width / 2, heights, width, label=model.name)
        panel.set_title(metric)
        panel.set_xticks(x)
        panel.set_xticklabels(label_names, rotation=45, ha="right", fontsize=7)
        panel.axhline(0, color="black", linewidth=0.5)
    panels[0].set_ylim(min(0.0, panels[0].get_ylim()[0]), 1.0)
    if len(models) > 1:
        panels[-1].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
