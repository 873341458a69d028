"""Score a trained model on a labelled dataset split.

Under torchrun each rank scores a round-robin share of the split; every rank gets all scores,
and only rank 0 prints (see :mod:`synnav_cli.runtime.distributed`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synnav_cli import console
from synnav_cli.data.dataset import assign_splits, read_dataset, same_label
from synnav_cli.errors import UserError
from synnav_cli.calibration import calibration_report, fit_calibration
from synnav_cli.metrics import Scores, evaluate_predictions
from synnav_cli.modeldir import ModelInfo, check_replaceable, copy_model_dir
from synnav_cli.runtime import distributed
from synnav_cli.scoring.load import open_model
from synnav_cli.scoring.score import score_sequences


def evaluate(
    info: ModelInfo,
    data_path: Path,
    *,
    split: str = "test",
    device: str = "auto",
    max_tokens: int | None = None,
    offline: bool = False,
    precision: str = "auto",
) -> dict:
    """Per-label F1 (at the model's thresholds), ROC-AUC, PR-AUC, MCC and support, plus means.

    Arguments:
        info: the model to evaluate.
        data_path: labelled dataset; a model label it lacks is unknown for every protein (no
            metrics for it, said in one line), as a label missing from a record is.
        split: train, dev, test, or all.
        device: auto, cpu, cuda, cuda:N or mps.
        max_tokens: padded tokens per batch; None derives it from the device.
        offline: never download weights.
        precision: auto, fp32, bf16 or fp16 (see ``hardware.scoring_precision``).
    """
    result, _scores = evaluate_with_scores(
        info,
        data_path,
        split=split,
        device=device,
        max_tokens=max_tokens,
        offline=offline,
        precision=precision,
    )
    return result


def evaluate_with_scores(
    info: ModelInfo,
    data_path: Path,
    *,
    split: str = "test",
    device: str = "auto",
    max_tokens: int | None = None,
    offline: bool = False,
    precision: str = "auto",
) -> tuple[dict, Scores]:
    """:func:`evaluate`, plus the per-protein probabilities and labels the metrics came from.

    Arguments: as for :func:`evaluate`.
    """
    distributed.init()
    dataset = read_dataset(data_path)
    # A dataset may spell a label as the output columns do (excitatory_synapse) or with a space.
    found = {
        name: next((j for j, d in enumerate(dataset.label_names) if same_label(name, d)), None)
        for name in info.label_names
    }
    missing = [name for name, j in found.items() if j is None]
    if len(missing) == len(found):
        raise UserError(
            f"{data_path} has none of the model's labels ({', '.join(info.label_names)})"
        )
    if missing and distributed.is_main():
        console.warn(
            f"{data_path} lacks the model's labels {', '.join(missing)}: they are unknown for "
            "every protein and get no metrics"
        )
    if split != "all":
        config = info.meta.get("config", {})
        dataset = assign_splits(dataset, seed=int(config.get("seed", 0))).subset(split)
        if len(dataset) == 0:
            raise UserError(f"the {split} split of {data_path} is empty")
    loaded = open_model(
        info, device=device, max_tokens=max_tokens, offline=offline, precision=precision
    )
    sequences = [s[: loaded.max_length] for s in dataset.sequences]
    # Under torchrun rank 0 reports its own share.
    progress = console.Progress(-(-len(sequences) // distributed.world_size()), "evaluate")

    def score(part: list[str]) -> np.ndarray:
        return score_sequences(loaded.model, loaded.backbone, part, loaded.runtime, progress)

    probs = distributed.score_sharded(score, sequences)
    progress.close()
    # A label the data lacks is unknown (NaN) for every protein, as docs/data-format.md says.
    labels = np.full((len(dataset), len(info.label_names)), np.nan, dtype=np.float32)
    for k, name in enumerate(info.label_names):
        if found[name] is not None:
            labels[:, k] = dataset.labels[:, found[name]]
    # F1, MCC and the curves are of the model's scores, where its calls are made; the ECE is of
    # both the scores and the probabilities predict writes (calibrated, where the model is).
    result = evaluate_predictions(labels, probs, info.label_names, info.thresholds)
    calibration = info.calibration
    shown = calibration.apply(probs) if calibration is not None else None
    add_calibration(result, calibration_report(labels, probs, shown, info.label_names))
    result["calibrated"] = calibration.calibrated_labels if calibration is not None else []
    result["model"] = str(info.path)
    result["name"] = info.name
    result["split"] = split
    result["proteins"] = len(dataset)
    result["precision"] = loaded.runtime.precision
    return result, Scores(
        info.label_names, list(dataset.entries), labels, probs, info.thresholds, shown
    )


def add_calibration(result: dict, report: dict) -> None:
    """Put each label's ECE (and Brier score) in its metrics: ``ece_raw`` of the model's scores,
    ``ece`` of the probabilities predict writes (the same numbers for an uncalibrated model)."""
    for name, metrics in result["labels"].items():
        entry = report["labels"][name]
        metrics["ece_raw"] = entry["ece_raw"]
        metrics["ece"] = entry.get("ece", entry["ece_raw"])
        metrics["brier_raw"] = entry["brier_raw"]
        metrics["brier"] = entry.get("brier", entry["brier_raw"])
    for key in ("ece_raw", "brier_raw"):
        result["mean"][key] = report["mean"].get(key)
        result["mean"][key.removesuffix("_raw")] = report["mean"].get(
            key.removesuffix("_raw"), report["mean"].get(key)
        )


def calibrate_model(
    info: ModelInfo,
    data_path: Path,
    out: Path,
    *,
    method: str = "auto",
    force: bool = False,
    device: str = "auto",
    max_tokens: int | None = None,
    offline: bool = False,
    precision: str = "auto",
) -> tuple[Path, dict]:
    """Fit a per-label calibration on the dev split and write the model with it to ``out``.

    The weights and thresholds are copied unchanged, so the calls stay the same; only the
    probabilities written change. Returns ``out`` and each label's dev ECE ``[before, after]``.

    Arguments:
        info: the model to calibrate.
        data_path: labelled dataset whose dev split (as the model's seed assigns it) is fitted.
        out: the new model directory; the model's own directory (or another existing model
            directory) is replaced only with ``force``.
        method: auto (per label, the lowest cross-validated Brier score on dev), temperature,
            platt or isotonic.
        force: replace an existing model directory at ``out``.
        device, max_tokens, offline, precision: as for :func:`evaluate`.
    """
    check_replaceable(out, force)  # before minutes of scoring, not after
    result, scores = evaluate_with_scores(
        info,
        data_path,
        split="dev",
        device=device,
        max_tokens=max_tokens,
        offline=offline,
        precision=precision,
    )
    unlearned = tuple(j for j, t in enumerate(info.thresholds) if t >= 1.0)
    calibration, dev_ece = fit_calibration(
        scores.labels, scores.probabilities, info.label_names, method, skip=unlearned
    )
    stored = calibration.to_meta(dev_ece)
    stored.update({"method": method, "data": str(data_path), "proteins": result["proteins"]})
    copy_model_dir(info, out, {**info.meta, "calibration": stored}, force=force)
    return Path(out), dev_ece
