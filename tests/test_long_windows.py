"""`--long window`: the head reads one mean over the whole protein's residues, as in training."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from synnav_cli.backbones.base import Backbone
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.data.fasta import FastaRecord
from synnav_cli.model import LocalizationModel
from synnav_cli.predict.run import predict_records
from synnav_cli.scoring.score import Runtime

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


class ResidueEncoder(nn.Module):
    """Each residue's vector depends on that residue alone: the mean over a protein is then the
    same however the protein is cut, so a windowed protein must score as the whole one."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(len(ESM_VOCABULARY), dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class ResidueBackbone(Backbone):
    id = "residue-test"
    embedding_dim = 8
    max_length = 5000
    license = "MIT"

    def tokenize(self, sequences):
        return ESM_VOCABULARY.batch(sequences)

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        return ResidueEncoder(self.embedding_dim)


@pytest.fixture
def residue_model():
    torch.manual_seed(3)
    backbone = ResidueBackbone()
    model = LocalizationModel(backbone.build_encoder(), backbone.embedding_dim, num_labels=4)
    with torch.no_grad():  # logits far from 0, where averaging probabilities distorts most
        model.head.linear.weight.mul_(8.0)
    return model.eval(), backbone


def _probabilities(model, backbone, sequences, limit, policy, max_tokens=4096):
    records = [FastaRecord(f"p{i}", "", s) for i, s in enumerate(sequences)]
    runtime = Runtime(torch.device("cpu"), "fp32", max_tokens=max_tokens)
    rows = list(
        predict_records(model, backbone, records, runtime, max_length=limit, long_policy=policy)
    )
    return np.stack([row.probabilities for row in rows]), [row.status for row in rows]


@pytest.mark.parametrize("length, limit", [(1000, 300), (1234, 400), (801, 800), (3907, 800)])
def test_windowed_protein_scores_as_the_whole_protein(residue_model, length, limit):
    model, backbone = residue_model
    rng = random.Random(length)
    protein = "".join(rng.choice(AMINO_ACIDS) for _ in range(length))
    windowed, statuses = _probabilities(model, backbone, [protein], limit, "window")
    whole, _ = _probabilities(model, backbone, [protein], length, "truncate")
    assert statuses[0].startswith("windowed:")
    # Averaging the windows' probabilities (overlaps counted twice, means after the sigmoid)
    # missed by up to 0.016 here.
    np.testing.assert_allclose(windowed, whole, atol=1e-5)


def test_a_repeated_protein_gets_the_calls_of_its_repeat(residue_model):
    """A protein made of one short protein repeated has that protein's mean residue vector."""
    model, backbone = residue_model
    short = (
        "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAG"
        "EGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYP"
    )
    repeated = short * 10
    windowed, _ = _probabilities(model, backbone, [repeated, short], 500, "window")
    np.testing.assert_allclose(windowed[0], windowed[1], atol=1e-5)


def test_windows_batch_with_whole_proteins_in_input_order(residue_model):
    """Windowed and whole proteins in one chunk, windows split over several batches: every row
    is the protein's own, whatever the batching."""
    model, backbone = residue_model
    rng = random.Random(7)
    proteins = ["".join(rng.choice(AMINO_ACIDS) for _ in range(n)) for n in (900, 60, 2500, 120)]
    small_batches, statuses = _probabilities(model, backbone, proteins, 500, "window", 600)
    alone = np.concatenate(
        [_probabilities(model, backbone, [p], len(p), "truncate")[0] for p in proteins]
    )
    assert statuses == ["windowed:3", "ok", "windowed:9", "ok"]
    np.testing.assert_allclose(small_batches, alone, atol=1e-5)
