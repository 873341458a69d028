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
from synnav_cli.metrics import Scores, evaluate_predictions
from synnav_cli.modeldir import ModelInfo
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
    result = evaluate_predictions(labels, probs, info.label_names, info.thresholds)
    result["model"] = str(info.path)
    result["name"] = info.name
    result["split"] = split
    result["proteins"] = len(dataset)
    result["precision"] = loaded.runtime.precision
    return result, Scores(info.label_names, list(dataset.entries), labels, probs, info.thresholds)
