"""ESM C's linear layers on oneDNN for CPU inference: the same numbers, and only when it applies."""

from __future__ import annotations

import random

import pytest
import torch

from synnav_cli.backbones import cpu_linear, esmc_cpu
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.backbones.esmc_model import ESMCConfig, ESMCEncoder

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")

CPU_BACKENDS = ("padded", "split", "nested")
_rng = random.Random(7)
# One residue, a peptide and longer proteins, mixed so that a batch pads.
PROTEINS = ["".join(_rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n)) for n in (1, 9, 130, 47)]

needs_onednn = pytest.mark.skipif(
    cpu_linear._ONEDNN_LINEAR is None, reason="this torch has no oneDNN linear"
)


def _encoder(seed: int = 0) -> ESMCEncoder:
    torch.manual_seed(seed)
    encoder = ESMCEncoder(ESMCConfig(d_model=64, n_heads=4, n_layers=3)).eval()
    for parameter in encoder.parameters():  # LayerNorms away from their 1s and 0s
        parameter.data += 0.05 * torch.randn_like(parameter)
    return encoder


def _both(encoder: ESMCEncoder, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(modules' own linear layers, oneDNN path), both without gradients."""
    with torch.no_grad():
        encoder.onednn_linear = False
        old = encoder(batch.input_ids, batch.attention_mask)
        encoder.onednn_linear = True
        new = encoder(batch.input_ids, batch.attention_mask)
    return old, new


class _Counting:
    """Stands in for the oneDNN op and counts its calls."""

    def __init__(self, op) -> None:
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)


@pytest.fixture
def counted(monkeypatch) -> _Counting:
    """The oneDNN op, counted, and taken on any CPU (an Intel one keeps F.linear by default)."""
    counting = _Counting(cpu_linear._ONEDNN_LINEAR)
    monkeypatch.setattr(cpu_linear, "_ONEDNN_LINEAR", counting)
    monkeypatch.setattr(cpu_linear, "_ONEDNN_PAYS", True)
    return counting


@needs_onednn
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_onednn_path_matches_the_modules_batched_and_alone(backend, counted):
    encoder = _encoder()
    encoder.attention_backend = backend
    batch = ESM_VOCABULARY.batch(PROTEINS)
    old, new = _both(encoder, batch)
    mask = batch.attention_mask
    assert (new[mask] - old[mask]).abs().max() <= 1e-5
    assert not new[~mask].any()
    # 4 linear layers a block, 3 blocks; the padded path runs each once for the whole batch.
    assert counted.calls == 12
    for protein in PROTEINS:
        single = ESM_VOCABULARY.batch([protein])
        old, new = _both(encoder, single)
        assert (new - old).abs().max() <= 1e-5


@needs_onednn
def test_gradients_keep_the_modules_own_calls(counted):
    encoder = _encoder(1)
    batch = ESM_VOCABULARY.batch(PROTEINS)
    with torch.no_grad():
        encoder.onednn_linear = False
        expected = encoder(batch.input_ids, batch.attention_mask)
    encoder.onednn_linear = True
    got = encoder(batch.input_ids, batch.attention_mask)  # grads on: training, --explain
    assert got.requires_grad and counted.calls == 0
    assert torch.equal(got.detach(), expected)
    got.square().sum().backward()
    assert encoder.transformer.blocks[0].ffn[1].weight.grad is not None


@needs_onednn
def test_bf16_and_the_switch_keep_the_modules_own_calls(counted):
    encoder = _encoder(2)
    batch = ESM_VOCABULARY.batch(PROTEINS[:2])
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            encoder(batch.input_ids, batch.attention_mask)
        encoder.onednn_linear = False
        encoder(batch.input_ids, batch.attention_mask)
        encoder.onednn_linear = True
        encoder.to(torch.bfloat16)  # what --precision bf16 runs on CPU
        encoder(batch.input_ids, batch.attention_mask)
    assert counted.calls == 0


def test_without_the_op_the_modules_run(monkeypatch):
    monkeypatch.setattr(cpu_linear, "_ONEDNN_LINEAR", None)
    x = torch.zeros(2, 4)
    with torch.no_grad():
        assert esmc_cpu.dense_for(x) is esmc_cpu.module_call
    encoder = _encoder(3)
    batch = ESM_VOCABULARY.batch(PROTEINS)
    old, new = _both(encoder, batch)
    assert torch.equal(old, new)


def test_onednn_only_off_intel():
    # MKL ran ESM C 600M's forward 1.08x faster than oneDNN on an Intel Xeon; oneDNN ran it
    # 2.2-2.7x faster than MKL on AMD EPYC (MKL's generic path there).
    assert not cpu_linear.onednn_pays("GenuineIntel")
    assert cpu_linear.onednn_pays("AuthenticAMD")
    assert cpu_linear.onednn_pays(None)  # unknown: as before


@needs_onednn
def test_an_intel_cpu_keeps_the_modules_own_calls(counted, monkeypatch):
    monkeypatch.setattr(cpu_linear, "_ONEDNN_PAYS", False)
    with torch.no_grad():
        assert esmc_cpu.dense_for(torch.zeros(2, 4)) is esmc_cpu.module_call
        assert not cpu_linear.onednn_applies(torch.zeros(2, 4), torch.zeros(3, 4))
    encoder = _encoder(4)
    batch = ESM_VOCABULARY.batch(PROTEINS)
    old, new = _both(encoder, batch)
    assert counted.calls == 0
    assert torch.equal(old, new)


def test_other_linear_modules_keep_their_own_call():
    class Wrapped(torch.nn.Linear):
        def forward(self, x):
            return super().forward(x) + 1

    layer = Wrapped(4, 3)
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(esmc_cpu.onednn_call(layer, x), layer(x))
