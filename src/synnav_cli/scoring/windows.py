"""Proteins longer than a model takes, scored as overlapping windows pooled into one embedding.

Every synnav head reads the mean of the encoder's residue vectors over the whole protein. A long
protein is cut into windows of the model's length (neighbours share half a window); each
residue is counted once, in the window where it sits farthest from an edge (the one whose
centre is nearest), and the head reads the mean of those residue vectors over the whole
protein. That is the kind of input the head was trained on: a mean over every residue, each
residue seen with context on both sides where the protein has it.

Averaging the windows' probabilities instead, as synnav did before, counts the overlaps twice
and averages after the sigmoid, which pulls every probability towards the middle: on the long
test proteins of the synnav dataset the bundled model then called almost nothing (see
docs/quickstart.md, "Long proteins").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import torch

from synnav_cli.backbones.base import Backbone
from synnav_cli.console import ChunkProgress, Progress
from synnav_cli.model import LocalizationModel
from synnav_cli.scoring.score import Runtime, run_batches


@dataclass(frozen=True)
class Window:
    """``sequence[start:start + size]``, of which residues ``own_from:own_to`` (counted from
    ``start``) are this window's share of the protein."""

    sequence: str
    start: int
    own_from: int
    own_to: int


def plan_windows(sequence: str, size: int) -> list[Window]:
    """Windows of ``size`` residues covering ``sequence``; neighbours share half a window and
    every residue belongs to exactly one window, the one whose centre is nearest."""
    stride = max(1, size // 2)
    starts = list(range(0, len(sequence) - size + 1, stride))
    if starts[-1] + size < len(sequence):
        starts.append(len(sequence) - size)
    # Centres are start + size/2, so the midpoint between two centres is (a + b + size) / 2.
    bounds = [0, *((a + b + size) // 2 for a, b in pairwise(starts)), len(sequence)]
    return [
        Window(sequence[s : s + size], s, bounds[i] - s, bounds[i + 1] - s)
        for i, s in enumerate(starts)
    ]


def window_sums(
    model: LocalizationModel,
    backbone: Backbone,
    windows: Sequence[Window],
    runtime: Runtime,
    progress: Progress | ChunkProgress | None = None,
) -> np.ndarray:
    """``[len(windows), dim + 1]``: each window's sum of the residue vectors it owns, then how
    many residues that is. Rows of numbers, so that ranks can share the windows
    (``distributed.score_sharded``)."""
    model.eval()
    result = np.zeros((len(windows), model.head.linear.in_features + 1), dtype=np.float32)
    lengths = [backbone.tokens(len(w.sequence)) for w in windows]

    @torch.inference_mode()
    def pool(index: list[int]) -> np.ndarray:
        chosen = [windows[i] for i in index]
        batch = backbone.tokenize([w.sequence for w in chosen]).to(runtime.device)
        # The residue tokens come in residue order (the Backbone contract), so a residue's
        # number in its window is the count of residue tokens before it.
        number = batch.residue_mask.long().cumsum(dim=1) - 1
        low = torch.tensor([w.own_from for w in chosen], device=number.device)[:, None]
        high = torch.tensor([w.own_to for w in chosen], device=number.device)[:, None]
        owned = batch.residue_mask & (number >= low) & (number < high)

        def forward() -> torch.Tensor:
            hidden = model.encoder(batch.input_ids, batch.attention_mask).float()
            return (hidden * owned.unsqueeze(-1).float()).sum(dim=1)  # fp32, as model.embed

        sums = runtime.run(forward)
        counts = owned.sum(dim=1, keepdim=True).float()
        return torch.cat([sums, counts], dim=1).cpu().numpy()

    for index, rows in run_batches(lengths, runtime, pool):
        result[index] = rows
        if progress is not None:
            progress.advance(len(index))
    return result


def pooled_probabilities(
    model: LocalizationModel, sums: np.ndarray, groups: Sequence[int], runtime: Runtime
) -> np.ndarray:
    """Probabilities ``[len(groups), labels]`` of proteins whose windows are ``sums``' rows,
    ``groups[k]`` consecutive rows for the k-th protein: the head on each protein's mean residue
    vector."""
    ends = np.cumsum(groups)
    totals = np.add.reduceat(sums, ends - np.asarray(groups), axis=0) if len(groups) else sums
    pooled = totals[:, :-1] / np.maximum(totals[:, -1:], 1.0)
    with torch.inference_mode():
        weight = model.head.linear.weight
        logits = model.head(torch.from_numpy(pooled).to(weight.device, weight.dtype)).float()
        return torch.sigmoid(logits).cpu().numpy()
