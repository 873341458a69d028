"""Several aacnn networks and a logistic regression side by side, loaded and run as one model.

Small networks trained from scratch on a few thousand proteins vary a lot from one seed to the
next (on the synnav dataset, the same recipe with two seeds called 6 and 3 of 8 marker proteins).
Averaging several seeds' logits removes much of that variance. synnav's head is a linear map of
the mean over residues, and both are linear, so an average of members' logits is itself one
synnav model: concatenate the members' per-residue features here, place each member's head
weights, divided by the number of members, side by side in one head, and average the biases.
``ensemble_state`` does exactly that with members trained separately (``synnav train
--backbone aacnn`` with different seeds); the result loads, predicts, explains and embeds through
the ordinary model path. Trained directly with ``--backbone aacnn-ensemble``, the members learn
jointly instead, which is a wider network rather than an ensemble.

One more member is a logistic regression on aacnn's global descriptors (length, composition,
hydrophobic segments; see ``GlobalFeatures``), standardised here by fixed means and deviations.
On the dataset's dev split it alone ranks proteins better than one aacnn network (mean ROC-AUC
0.737 against 0.724), and averaging the two does better than either; ``ensemble_state`` weighs
the networks' mean logit against the regression's by a weight chosen on dev.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from synnav_cli.backbones.aacnn import AACNNBackbone, AACNNEncoder, GlobalFeatures
from synnav_cli.hookspecs import hookimpl

MEMBERS = 3


class StandardisedDescriptors(nn.Module):
    """aacnn's global descriptors, standardised, at every position: a linear head on their mean
    is a logistic regression on them."""

    def __init__(self) -> None:
        super().__init__()
        self.describe = GlobalFeatures()
        # Fitted values, stored with the weights (persistent buffers), not learned by synnav train.
        self.register_buffer("mean", torch.zeros(GlobalFeatures.size))
        self.register_buffer("scale", torch.ones(GlobalFeatures.size))

    def forward(self, described: torch.Tensor, length: int) -> torch.Tensor:
        """``described``: ``self.describe``'s output for the batch; ``length``: its positions."""
        values = (described - self.mean.float()) / self.scale.float()
        return values.unsqueeze(1).expand(-1, length, -1)


class AACNNEnsembleEncoder(nn.Module):
    """``forward(input_ids, attention_mask)`` -> the members' outputs, concatenated, then the
    standardised descriptors."""

    def __init__(self, members: int = MEMBERS) -> None:
        super().__init__()
        self.members = nn.ModuleList(AACNNEncoder() for _ in range(members))
        self.descriptors = StandardisedDescriptors()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # fp32 out, whatever the members' dtype: the regression's standardised descriptors
        # would lose up to 0.1 in probability on bf16 (measured with --precision bf16).
        # The descriptors are the same for every member: computed once, here.
        described = self.descriptors.describe(input_ids, attention_mask)
        parts = [
            member(input_ids, attention_mask, descriptors=described).float()
            for member in self.members
        ]
        parts.append(self.descriptors(described, input_ids.shape[1]))
        return torch.cat(parts, dim=-1)


class AACNNEnsembleBackbone(AACNNBackbone):
    """aacnn's tokens and fixed-seed "pretrained" encoder, with the ensemble's encoder."""

    id = "aacnn-ensemble"
    embedding_dim = MEMBERS * AACNNBackbone.embedding_dim + GlobalFeatures.size
    description = (
        f"{MEMBERS} aacnn networks and a logistic regression on global descriptors, logits "
        "averaged (no download)"
    )

    def fingerprint(self) -> str:
        return f"{super().fingerprint()}-x{MEMBERS}"

    def implausibility(self, pooled: np.ndarray) -> np.ndarray:
        # The members' own scores (each member's last feature), averaged.
        width = AACNNBackbone.embedding_dim
        columns = [k * width + width - 1 for k in range(MEMBERS)]
        return np.asarray(pooled)[:, columns].mean(axis=1)

    def new_encoder(self) -> nn.Module:
        return AACNNEnsembleEncoder()


@dataclass(frozen=True)
class Regression:
    """Per-label logistic regression on standardised descriptors: logit = x @ weight.T + bias."""

    weight: torch.Tensor  # [labels, GlobalFeatures.size]
    bias: torch.Tensor  # [labels]
    mean: torch.Tensor  # [GlobalFeatures.size], subtracted before scaling
    scale: torch.Tensor  # [GlobalFeatures.size]


def ensemble_state(
    networks: Sequence[Mapping[str, torch.Tensor]], regression: Regression, network_weight: float
) -> dict[str, torch.Tensor]:
    """One aacnn-ensemble state dict whose logit for every label is ``network_weight`` times the
    mean of the ``networks'`` logits plus ``1 - network_weight`` times the regression's.

    Each network is the state dict of a whole (not ``--freeze``) aacnn model.
    """
    if len(networks) != MEMBERS:
        raise ValueError(f"aacnn-ensemble holds {MEMBERS} networks, got {len(networks)}")
    if not 0.0 <= network_weight <= 1.0:
        raise ValueError(f"network_weight must lie in [0, 1], got {network_weight}")
    state: dict[str, torch.Tensor] = {}
    for k, network in enumerate(networks):
        for name, tensor in network.items():
            if name.startswith("encoder."):
                state[f"encoder.members.{k}.{name.removeprefix('encoder.')}"] = tensor
    state["encoder.descriptors.mean"] = regression.mean.float()
    state["encoder.descriptors.scale"] = regression.scale.float()
    share = network_weight / len(networks)
    state["head.linear.weight"] = torch.cat(
        [share * network["head.linear.weight"] for network in networks]
        + [(1.0 - network_weight) * regression.weight.float()],
        dim=1,
    )
    network_bias = torch.stack([n["head.linear.bias"] for n in networks]).mean(dim=0)
    state["head.linear.bias"] = (
        network_weight * network_bias + (1.0 - network_weight) * regression.bias.float()
    )
    return state


@hookimpl
def register_backbones(register):
    register(AACNNEnsembleBackbone())
