"""Backbone + masked mean pooling + localization head, and the class-weighted BCE loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synnav_cli.backbones.base import TokenBatch
from synnav_cli.errors import UserError

# Extra up-weighting of the rare synapse classes in the origin's "A2" loss, on top of the
# negative/positive ratio. Matched by label name, case-insensitively.
A2_MULTIPLIERS = {"excitatory synapse": 8.0, "inhibitory synapse": 10.0}
LOSS_PRESETS = ("a2", "balanced", "unweighted")


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions in ``mask`` ([batch, length] bool); padding and specials excluded."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp_min(1.0)
    return total / count


class LocalizationHead(nn.Module):
    def __init__(self, embedding_dim: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(embedding_dim, num_labels)

    def replace_dropout(self, dropout: nn.Module) -> nn.Module:
        """Use ``dropout`` instead of ``nn.Dropout`` (training draws one mask per global batch)."""
        self.dropout = dropout
        return dropout

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(pooled))


class LocalizationModel(nn.Module):
    """One logit per label for each protein."""

    def __init__(self, encoder: nn.Module, embedding_dim: int, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = LocalizationHead(embedding_dim, num_labels)

    def embed(self, batch: TokenBatch) -> torch.Tensor:
        hidden = self.encoder(batch.input_ids, batch.attention_mask)
        # Pool in fp32: a mean over thousands of bf16 values loses precision.
        return masked_mean(hidden.float(), batch.residue_mask)

    def forward(self, batch: TokenBatch) -> torch.Tensor:
        return self.head(self.embed(batch))


def positive_weights(labels: np.ndarray, label_names: list[str], preset: str = "a2") -> np.ndarray:
    """Per-label ``pos_weight`` = negatives / positives among the *known* labels given.

    Pass the training split only: computing the ratios on all data leaks the test split into the
    loss. ``a2`` multiplies the synapse labels (``A2_MULTIPLIERS``); ``balanced`` uses the plain
    ratios; ``unweighted`` returns ones.
    """
    preset = preset.lower()
    if preset not in LOSS_PRESETS:
        raise UserError(f"unknown loss {preset!r}; choose one of {', '.join(LOSS_PRESETS)}")
    if preset == "unweighted":
        return np.ones(len(label_names), dtype=np.float32)
    positives = np.nansum(labels == 1, axis=0).astype(np.float64)
    negatives = np.nansum(labels == 0, axis=0).astype(np.float64)
    # A label with no positives in training cannot be weighted by a ratio; leave it at 1.
    ratio = np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)
    if preset == "a2":
        for j, name in enumerate(label_names):
            if positives[j] > 0:
                ratio[j] *= A2_MULTIPLIERS.get(name.lower(), 1.0)
    return ratio.astype(np.float32)


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor
) -> torch.Tensor:
    """Class-weighted BCE over known labels only; ``targets`` holds NaN where unknown."""
    known = ~torch.isnan(targets)
    safe_targets = torch.where(known, targets, torch.zeros_like(targets))
    losses = F.binary_cross_entropy_with_logits(
        logits.float(), safe_targets, pos_weight=pos_weight, reduction="none"
    )
    losses = losses * known
    return losses.sum() / known.sum().clamp_min(1)
