"""Scoring proteins with a model: length-sorted token-budget batches, results in input order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from synnav_cli import batching, hardware
from synnav_cli.backbones.base import Backbone
from synnav_cli.console import Progress
from synnav_cli.model import LocalizationModel


@dataclass
class Runtime:
    """Where and how batches run."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16, already resolved for the device
    max_tokens: int
    max_batch_size: int | None = None


def _is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


@torch.inference_mode()
def _score_batch(
    model: LocalizationModel, backbone: Backbone, sequences: list[str], runtime: Runtime
) -> np.ndarray:
    try:
        batch = backbone.tokenize(sequences).to(runtime.device)
        with hardware.autocast(runtime.device, runtime.precision):
            logits = model(batch)
        return torch.sigmoid(logits.float()).cpu().numpy()
    except RuntimeError as error:
        # Out of memory: free what we can, then score the two halves separately.
        if not _is_out_of_memory(error) or len(sequences) == 1:
            raise
        if runtime.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(sequences) // 2
        return np.concatenate(
            [
                _score_batch(model, backbone, sequences[:half], runtime),
                _score_batch(model, backbone, sequences[half:], runtime),
            ]
        )


def score_sequences(
    model: LocalizationModel,
    backbone: Backbone,
    sequences: Sequence[str],
    runtime: Runtime,
    progress: Progress | None = None,
) -> np.ndarray:
    """Probabilities ``[len(sequences), labels]`` in the order given."""
    model.eval()
    num_labels = model.head.linear.out_features
    result = np.zeros((len(sequences), num_labels), dtype=np.float32)
    lengths = [len(s) + 2 for s in sequences]  # room for special tokens
    for index in batching.inference_batches(lengths, runtime.max_tokens, runtime.max_batch_size):
        result[index] = _score_batch(model, backbone, [sequences[i] for i in index], runtime)
        if progress is not None:
            progress.advance(len(index))
    return result

