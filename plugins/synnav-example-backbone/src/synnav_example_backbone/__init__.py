"""An example synnav backbone: one-hot residues and a small bidirectional GRU, no downloads.

It is meant to be copied. The parts every backbone has:

- a :class:`~synnav_cli.backbones.base.Backbone` subclass with an id, the embedding size, the
  longest protein it takes, and a licence;
- ``tokenize``, which turns protein strings into a padded :class:`TokenBatch`;
- ``build_encoder``, which builds the ``nn.Module`` (and would load weights; this one has none);
- a ``register_backbones`` hook implementation, found through the ``synnav`` entry point in
  ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from synnav_cli import hookimpl
from synnav_cli.backbones.base import Backbone, TokenBatch, Vocabulary
from synnav_cli.data.fasta import AMINO_ACIDS

# Padding, unknown, then one token per letter synnav accepts (the 20 residues and X B Z J U O).
VOCABULARY = Vocabulary(["<pad>", "<unk>", *sorted(AMINO_ACIDS)], pad="<pad>", unk="<unk>")


class OneHotGRU(nn.Module):
    """One-hot residues -> bidirectional GRU -> per-residue embeddings ``[batch, length, 2 * hidden]``."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        size = len(VOCABULARY)
        # One-hot encoding as a frozen identity embedding: the encoder then starts with an
        # nn.Embedding, which is what `synnav predict --explain` attributes against.
        self.one_hot = nn.Embedding(size, size, padding_idx=VOCABULARY.pad_id)
        with torch.no_grad():
            self.one_hot.weight.copy_(torch.eye(size))
            self.one_hot.weight[VOCABULARY.pad_id].zero_()
        self.one_hot.weight.requires_grad_(False)
        self.gru = nn.GRU(size, hidden, batch_first=True, bidirectional=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embedded = self.one_hot(input_ids)
        lengths = attention_mask.sum(dim=1).clamp_min(1).cpu()
        # Packing keeps padding out of the backward direction, so a protein's embedding does not
        # depend on the length of the longest protein in its batch.
        packed = pack_padded_sequence(embedded, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.gru(packed)
        hidden, _ = pad_packed_sequence(output, batch_first=True, total_length=input_ids.shape[1])
        return hidden


class ExampleBackbone(Backbone):
    id = "example"
    embedding_dim = 32
    max_length = 1000
    license = "MIT"
    description = "example plugin: one-hot + BiGRU, no pretrained weights"
    weights_repo = None  # nothing to download: weights_cached() reports "not needed"

    def tokenize(self, sequences: Sequence[str]) -> TokenBatch:
        return VOCABULARY.batch(sequences)

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        # There are no published weights. A fixed seed stands in for them, so that a model
        # trained with --freeze (which stores the head only) rebuilds the same encoder.
        if pretrained:
            with torch.random.fork_rng():
                torch.manual_seed(20261125)
                return OneHotGRU(self.embedding_dim // 2)
        return OneHotGRU(self.embedding_dim // 2)


@hookimpl
def register_backbones(register):
    # Cheap: creates a configuration object only; the GRU is built when a model is.
    register(ExampleBackbone(), aliases=("example-gru",))
