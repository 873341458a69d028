"""A backbone of a few thousand parameters, registered through the plugin hook like any other."""

from __future__ import annotations

import torch
from torch import nn

from synnav_cli import hookimpl
from synnav_cli.backbones.base import Backbone
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY


class TinyEncoder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(ESM_VOCABULARY), dim, padding_idx=ESM_VOCABULARY.pad_id)
        self.conv = nn.Conv1d(dim, dim, kernel_size=5, padding=2)
        self.act = nn.GELU()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) * attention_mask.unsqueeze(-1)
        return self.act(self.conv(hidden.transpose(1, 2)).transpose(1, 2)) + hidden


class TinyBackbone(Backbone):
    id = "tiny"
    embedding_dim = 16
    max_length = 512
    license = "MIT"
    description = "test backbone"

    def tokenize(self, sequences):
        return ESM_VOCABULARY.batch(sequences)

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        # "Pretrained" weights are a fixed seed, so a frozen model reloads the same encoder.
        if pretrained:
            with torch.random.fork_rng():
                torch.manual_seed(1234)
                return TinyEncoder(self.embedding_dim)
        return TinyEncoder(self.embedding_dim)


class TinyPlugin:
    @hookimpl
    def register_backbones(self, register):
        register(TinyBackbone(), aliases=("tiny-test",))
