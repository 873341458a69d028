"""ESM2's packed inference forward: the same numbers as transformers' EsmModel, and when it runs."""

from __future__ import annotations

import pytest
import torch

from synnav_cli.backbones import cpu_linear, esm2_packed
from synnav_cli.backbones.esm2 import ESM2_TINY, ESM2Encoder
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.model import LocalizationModel
from synnav_cli.plugins import get_backbone

# Mixed lengths (so batches pad), and a <mask> token, which changes token dropout's rescaling.
PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQLEERLG", "MNGTEGPNFYVPFSNKTGVV", "ACDEFGHIK", "MSTNPKPQRKTK"]


def _encoder(seed: int = 0) -> ESM2Encoder:
    from transformers import EsmModel

    torch.manual_seed(seed)
    model = EsmModel(ESM2_TINY.config(), add_pooling_layer=False)
    for parameter in model.parameters():  # LayerNorms and biases away from their 1s and 0s
        parameter.data += 0.05 * torch.randn_like(parameter)
    return ESM2Encoder(model).eval()


def _batch():
    batch = ESM_VOCABULARY.batch(PROTEINS)
    batch.input_ids[3, 5] = 32  # <mask>
    return batch


def _reference(encoder: ESM2Encoder, batch) -> torch.Tensor:
    with torch.no_grad():
        return encoder.esm(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask
        ).last_hidden_state


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "f.linear"])
def test_packed_forward_matches_esm_model_fp32(onednn, monkeypatch):
    if onednn and cpu_linear._ONEDNN_LINEAR is None:
        pytest.skip("this torch has no oneDNN linear")
    if not onednn:
        monkeypatch.setattr(cpu_linear, "_ONEDNN_LINEAR", None)
    monkeypatch.setattr(cpu_linear, "_ONEDNN_PAYS", onednn)  # either path on any CPU
    encoder, batch = _encoder(), _batch()
    expected = _reference(encoder, batch)
    with torch.inference_mode():
        got = esm2_packed.packed_forward(encoder.esm, batch.input_ids, batch.attention_mask)
    mask = batch.attention_mask
    assert got.shape == expected.shape
    assert (got[mask] - expected[mask]).abs().max() <= 1e-5
    assert not got[~mask].any()  # padding comes back as zeros


def test_packed_forward_one_unpadded_protein_and_an_empty_row():
    encoder = _encoder(1)
    single = ESM_VOCABULARY.batch(PROTEINS[:1])
    with torch.inference_mode():
        got = esm2_packed.packed_forward(encoder.esm, single.input_ids, single.attention_mask)
        empty = esm2_packed.packed_forward(
            encoder.esm, single.input_ids, torch.zeros_like(single.attention_mask)
        )
    assert (got - _reference(encoder, single)).abs().max() <= 1e-5
    assert empty.shape == got.shape and not empty.any()


def test_packed_forward_in_bf16_stays_close():
    encoder, batch = _encoder(2), _batch()
    expected = _reference(encoder, batch)
    mask = batch.attention_mask
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 autocast over fp32 weights
            autocast = encoder(batch.input_ids, batch.attention_mask)
        encoder.to(torch.bfloat16)  # what --precision bf16 runs on CPU
        cast = encoder(batch.input_ids, batch.attention_mask)
    for got in (autocast, cast):
        assert (got.float()[mask] - expected[mask]).abs().max() < 0.1


def test_inference_on_cpu_takes_the_packed_path_and_training_takes_esm_model(monkeypatch):
    calls = []
    packed = esm2_packed.packed_forward
    monkeypatch.setattr(
        esm2_packed, "packed_forward", lambda *args: calls.append(1) or packed(*args)
    )
    encoder, batch = _encoder(3), _batch()
    assert encoder.packed
    with torch.inference_mode():
        encoder(batch.input_ids, batch.attention_mask)
    assert len(calls) == 1

    # With gradients (training, attributions): EsmModel itself, with its gradient checkpointing.
    backbone = get_backbone("esm2_8m")
    assert backbone.set_gradient_checkpointing(encoder, True)
    encoder.train()
    out = encoder(batch.input_ids, batch.attention_mask)
    out[batch.attention_mask].sum().backward()
    assert len(calls) == 1
    assert all(p.grad is not None for p in encoder.esm.encoder.parameters())

    encoder.eval().packed = False  # the switch benchmarks/peers.py measures against
    with torch.inference_mode():
        encoder(batch.input_ids, batch.attention_mask)
    assert len(calls) == 1


def test_predict_scores_esm2_through_the_packed_path(monkeypatch):
    from synnav_cli.scoring.score import Runtime, score_sequences

    calls = []
    packed = esm2_packed.packed_forward
    monkeypatch.setattr(
        esm2_packed, "packed_forward", lambda *args: calls.append(1) or packed(*args)
    )
    backbone = get_backbone("esm2_8m")
    encoder = backbone.build_encoder(pretrained=False)
    model = LocalizationModel(encoder, backbone.embedding_dim, 3)
    runtime = Runtime(torch.device("cpu"), "fp32", max_tokens=1024)
    probabilities = score_sequences(model, backbone, PROTEINS, runtime)
    assert probabilities.shape == (len(PROTEINS), 3) and calls

    encoder.packed = False
    reference = score_sequences(model, backbone, PROTEINS, runtime)
    assert abs(probabilities - reference).max() <= 1e-5
