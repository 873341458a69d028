"""Per-protein embeddings out: the masked mean of the encoder's residue vectors (what the head of
every synnav model reads), optionally the residue vectors themselves.

Batches, token budgets and the out-of-memory backoff are scoring's (see :mod:`.score`); the
result is in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from synnav_cli.backbones.base import Backbone
from synnav_cli.console import ChunkProgress, Progress
from synnav_cli.model import masked_mean
from synnav_cli.scoring.score import Runtime, run_batches


@dataclass
class Embeddings:
    pooled: np.ndarray  # [proteins, dim] float32
    residues: list[np.ndarray] | None  # per protein [residues, dim], when asked for


def embed_sequences(
    encoder: torch.nn.Module,
    backbone: Backbone,
    sequences: Sequence[str],
    runtime: Runtime,
    *,
    per_residue: bool = False,
    progress: Progress | ChunkProgress | None = None,
) -> Embeddings:
    """Pooled (and with ``per_residue``, per-residue) embeddings of ``sequences``, in order.

    ``encoder`` is a backbone's encoder: pretrained, or the fine-tuned one of a trained model.
    ``progress`` advances by each batch's proteins as the batch is done.
    """
    encoder.eval()
    pooled = np.zeros((len(sequences), backbone.embedding_dim), dtype=np.float32)
    residues: list[np.ndarray | None] = [None] * len(sequences)
    lengths = [backbone.tokens(len(s)) for s in sequences]

    @torch.inference_mode()
    def embed(index: list[int]) -> tuple[np.ndarray, list[np.ndarray] | None]:
        batch = backbone.tokenize([sequences[i] for i in index]).to(runtime.device)
        mask = batch.residue_mask

        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            # Pooled in fp32, as LocalizationModel.embed does for the head.
            hidden = encoder(batch.input_ids, batch.attention_mask).float()
            return masked_mean(hidden, mask), hidden

        means, hidden = runtime.run(forward)
        rows = (
            [hidden[k][mask[k]].cpu().numpy() for k in range(len(index))] if per_residue else None
        )
        return means.cpu().numpy(), rows

    for index, (means, rows) in run_batches(lengths, runtime, embed):
        pooled[index] = means
        if rows is not None:
            for position, row in zip(index, rows):
                residues[position] = row
        if progress is not None:
            progress.advance(len(index))
    return Embeddings(pooled, residues if per_residue else None)  # type: ignore[arg-type]
