"""synnav's ESM C encoder against EvolutionaryScale's reference implementation.

Needs the `esm` package (3.2.1.post1), which synnav does not depend on: `.ci/parity-esmc.sh`
builds a virtual environment with it and runs this file. Elsewhere the module is skipped.

The reference model is built with random weights (fixed seed; LayerNorm scales and biases
perturbed away from 1 and 0 so that they matter), its state dict is loaded into synnav's
encoder through the same loader that reads published checkpoints, and the per-residue
embeddings are compared in fp32, for proteins batched together and alone, on every attention
path that runs on CPU.
"""

import random
from dataclasses import dataclass

import pytest
import torch

esmc_module = pytest.importorskip("esm.models.esmc")
tokenization = pytest.importorskip("esm.tokenization")

from synnav_cli.backbones.base import TokenBatch  # noqa: E402
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY  # noqa: E402
from synnav_cli.backbones.esmc_model import ESMCConfig, ESMCEncoder  # noqa: E402

TOLERANCE = 1e-4
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# Residues per protein: one residue, a peptide, and proteins long enough that the slow rotary
# frequencies matter. The full-size model gets shorter ones to keep the run within minutes.
LONG = (1, 9, 64, 200, 517)
SHORT = (1, 9, 64, 150)

# Width, heads, depth. The 2-layer stacks divide residuals by sqrt(2/36); the 36-layer ones by
# 1, as the 600M checkpoint does. The 960- and 1152-wide ones have the real head width, 64.
CONFIGS = {
    "tiny-64x4x2": (ESMCConfig(64, 4, 2), LONG),
    "deep-64x4x36": (ESMCConfig(64, 4, 36), LONG),
    "300M-wide-960x15x2": (ESMCConfig(960, 15, 2), LONG),
    "600M-wide-1152x18x2": (ESMCConfig(1152, 18, 2), LONG),
    "600M-full-1152x18x36": (ESMCConfig(1152, 18, 36), SHORT),
}


def proteins(lengths) -> list[str]:
    rng = random.Random(1234)
    seqs = ["".join(rng.choice(AMINO_ACIDS) for _ in range(n)) for n in lengths]
    # Rare letters, to check that both vocabularies map them alike.
    seqs[2] = seqs[2][:10] + "X" + seqs[2][11:30] + "U" + seqs[2][31:]
    return seqs


def reference_model(config: ESMCConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    model = esmc_module.ESMC(
        d_model=config.d_model,
        n_heads=config.n_heads,
        n_layers=config.n_layers,
        tokenizer=tokenization.get_esmc_model_tokenizers(),
        use_flash_attn=False,
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.1 * torch.randn_like(module.weight))
                if module.bias is not None:
                    module.bias.add_(0.1 * torch.randn_like(module.bias))
    return model.eval()


@dataclass
class Case:
    name: str
    ours: ESMCEncoder
    seqs: list[str]
    batch: TokenBatch
    ref_batched: torch.Tensor
    ref_alone: list[torch.Tensor]


@pytest.fixture(scope="module", params=list(CONFIGS))
@torch.no_grad()
def case(request):
    config, lengths = CONFIGS[request.param]
    seqs = proteins(lengths)
    batch = ESM_VOCABULARY.batch(seqs)
    reference = reference_model(config)
    # The reference derives its padding mask from the pad token, as the published model does.
    ref_batched = reference(sequence_tokens=batch.input_ids).embeddings
    ref_alone = [
        reference(sequence_tokens=ESM_VOCABULARY.batch([s]).input_ids).embeddings[0]
        for s in seqs
    ]
    ours = ESMCEncoder(config)
    ours.load_official_state_dict(reference.state_dict())
    del reference  # the full-size pair would otherwise hold two 2.3 GB models
    return Case(request.param, ours.eval(), seqs, batch, ref_batched, ref_alone)


@torch.no_grad()
def test_tokenizers_agree():
    model = reference_model(CONFIGS["tiny-64x4x2"][0])
    seqs = proteins(LONG)
    assert torch.equal(model._tokenize(seqs), ESM_VOCABULARY.batch(seqs).input_ids)


@pytest.mark.parametrize("backend", ["padded", "split", "nested"])
@torch.no_grad()
def test_embeddings_match_reference(case, backend):
    if backend == "nested" and case.name.startswith("600M-full"):
        pytest.skip("nested runs torch's slow math fallback on CPU; the smaller stacks cover it")
    ours = case.ours
    ours.attention_backend = backend
    batch = case.batch
    lengths = batch.attention_mask.sum(dim=1).tolist()
    ours_batched = ours(batch.input_ids, batch.attention_mask)
    assert ours_batched.shape == case.ref_batched.shape

    worst_batched = worst_alone = worst_self = 0.0
    for row, (seq, n) in enumerate(zip(case.seqs, lengths)):
        alone = ESM_VOCABULARY.batch([seq])
        ours_alone = ours(alone.input_ids, alone.attention_mask)[0]
        ref_batched = case.ref_batched[row, :n]
        worst_batched = max(worst_batched, _maxdiff(ours_batched[row, :n], ref_batched))
        worst_alone = max(worst_alone, _maxdiff(ours_alone, case.ref_alone[row]))
        # Padding must not leak: a protein batched with others equals the protein alone.
        worst_self = max(worst_self, _maxdiff(ours_batched[row, :n], ours_alone))
        assert torch.all(ours_batched[row, n:] == 0)

    print(
        f"\nESMC parity {case.name} [{backend}]: max|synnav - esm| batched {worst_batched:.2e}, "
        f"alone {worst_alone:.2e}; max|synnav batched - synnav alone| {worst_self:.2e}; "
        f"embedding scale max|x| {case.ref_batched.abs().max().item():.1f}"
    )
    assert worst_batched <= TOLERANCE
    assert worst_alone <= TOLERANCE
    assert worst_self <= TOLERANCE


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()
