"""synnav's plain-torch ESM C: checkpoint layout, padding that never leaks, the full-size 600M.

The comparison with EvolutionaryScale's own implementation is in ``tests/parity`` (its own
virtual environment, ``.ci/parity-esmc.sh``); everything here runs in the main suite.
"""

from __future__ import annotations

import random
import resource
import shutil
import time

import pytest
import torch
from hub_fixture import (  # noqa: F401 - fixtures
    cache_repo,
    no_network,
    official_esmc_shapes,
    official_esmc_state_dict,
    tiny_hub,
)

from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.backbones.esmc_model import (
    ESMC_300M,
    ESMC_600M,
    ESMC_TINY,
    IGNORED_CHECKPOINT_PREFIXES,
    CheckpointMismatch,
    ESMCConfig,
    ESMCEncoder,
)
from synnav_cli.plugins import get_backbone

# The "nested" path on CPU goes through torch's strided nested tensors, which warn that they are a
# prototype; on CUDA it takes the jagged kernels.
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")

# The official 600M checkpoint, masked-LM head included (EvolutionaryScale's figure).
ESMC_600M_CHECKPOINT_PARAMETERS = 575_036_992
CPU_BACKENDS = ("padded", "split", "nested")


def random_proteins(lengths, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWYX") for _ in range(n)) for n in lengths]


# One residue, a peptide, and proteins long enough for rotary positions to matter; mixed, so a
# batch carries a lot of padding.
PROTEINS = random_proteins((1, 9, 130, 47, 260))


def tiny_encoder(seed: int = 3, config: ESMCConfig = ESMC_TINY) -> ESMCEncoder:
    encoder = ESMCEncoder(config).eval()
    encoder.load_official_state_dict(official_esmc_state_dict(config.d_model, config.n_layers, seed=seed))
    return encoder


def run(encoder: ESMCEncoder, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder(input_ids, mask)


# --- the checkpoint layout ------------------------------------------------------------------------


@pytest.mark.parametrize("config", [ESMC_600M, ESMC_300M, ESMC_TINY], ids=["600M", "300M", "tiny"])
def test_module_tree_is_the_checkpoint_layout(config):
    # On the meta device: names and shapes only, no memory.
    with torch.device("meta"):
        encoder = ESMCEncoder(config)
    ours = {name: tuple(t.shape) for name, t in encoder.state_dict().items()}
    published = official_esmc_shapes(config.d_model, config.n_layers)
    ignored = {name for name in published if name.startswith(IGNORED_CHECKPOINT_PREFIXES)}
    assert ignored == {name for name in published if name.startswith("sequence_head.")}
    assert ours == {name: shape for name, shape in published.items() if name not in ignored}


def test_published_sizes():
    assert (ESMC_600M.d_model, ESMC_600M.n_heads, ESMC_600M.n_layers) == (1152, 18, 36)
    assert (ESMC_300M.d_model, ESMC_300M.n_heads, ESMC_300M.n_layers) == (960, 15, 30)
    # The SwiGLU widths of the checkpoints' ffn.1 ([2 * hidden, d]) and ffn.3 ([d, hidden]).
    assert (ESMC_600M.ffn_hidden, ESMC_300M.ffn_hidden) == (3072, 2560)
    assert ESMC_600M.residual_scale == 1.0
    total = sum(
        torch.Size(shape).numel()
        for shape in official_esmc_shapes(ESMC_600M.d_model, ESMC_600M.n_layers).values()
    )
    assert total == ESMC_600M_CHECKPOINT_PARAMETERS


def test_loading_drops_only_the_language_model_head():
    state = official_esmc_state_dict(64, 2, seed=1)
    encoder = ESMCEncoder(ESMC_TINY)
    encoder.load_official_state_dict(state)
    loaded = encoder.state_dict()
    assert set(state) - set(loaded) == {k for k in state if k.startswith("sequence_head.")}
    for name, value in loaded.items():
        assert torch.equal(value, state[name]), name


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda s: s.pop("transformer.blocks.1.attn.q_ln.weight"),
         "1 missing: transformer.blocks.1.attn.q_ln.weight"),
        (lambda s: s.update({"transformer.blocks.0.attn.rotary.inv_freq": torch.ones(8)}),
         "1 unexpected: transformer.blocks.0.attn.rotary.inv_freq"),
        (lambda s: s.update({"embed.weight": torch.zeros(33, 64)}),
         "1 wrong shape: embed.weight (33, 64) (model: (64, 64))"),
    ],
)  # fmt: skip
def test_anything_but_the_head_must_match(change, expected):
    state = official_esmc_state_dict(64, 2)
    change(state)
    encoder = ESMCEncoder(ESMC_TINY)
    before = {name: value.clone() for name, value in encoder.state_dict().items()}
    with pytest.raises(CheckpointMismatch) as error:
        encoder.load_official_state_dict(state)
    assert expected in str(error.value) and "\n" not in str(error.value)
    # Nothing was half loaded.
    for name, value in encoder.state_dict().items():
        assert torch.equal(value, before[name]), name


# --- padding never leaks --------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batched_equals_alone(backend):
    encoder = tiny_encoder()
    encoder.attention_backend = backend
    batch = ESM_VOCABULARY.batch(PROTEINS)
    together = run(encoder, batch.input_ids, batch.attention_mask)
    assert together.shape == (len(PROTEINS), max(map(len, PROTEINS)) + 2, ESMC_TINY.d_model)
    for row, protein in enumerate(PROTEINS):
        single = ESM_VOCABULARY.batch([protein])
        alone = run(encoder, single.input_ids, single.attention_mask)[0]
        n = alone.shape[0]
        torch.testing.assert_close(together[row, :n], alone, atol=2e-5, rtol=1e-5)
        # Outside the protein: exactly zero, never a leftover of the computation.
        assert not together[row, n:].any()


def test_all_cpu_paths_agree_and_padding_ids_do_not_matter():
    encoder = tiny_encoder(seed=11)
    batch = ESM_VOCABULARY.batch(PROTEINS)
    outputs = {}
    for backend in CPU_BACKENDS:
        encoder.attention_backend = backend
        outputs[backend] = run(encoder, batch.input_ids, batch.attention_mask)
    for backend in CPU_BACKENDS[1:]:
        torch.testing.assert_close(outputs[backend], outputs["padded"], atol=2e-5, rtol=1e-5)

    scrambled = batch.input_ids.clone()
    padding = ~batch.attention_mask
    scrambled[padding] = torch.randint(0, 64, (int(padding.sum()),), generator=torch.Generator().manual_seed(0))
    for backend in CPU_BACKENDS:
        encoder.attention_backend = backend
        torch.testing.assert_close(run(encoder, scrambled, batch.attention_mask), outputs[backend])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_left_padding_and_empty_rows(backend):
    # Rotary positions count real tokens, so a protein padded on the left is the same protein;
    # a row with no token at all must neither turn NaN nor disturb the others.
    encoder = tiny_encoder(seed=5)
    encoder.attention_backend = backend
    right = ESM_VOCABULARY.batch(PROTEINS[1:3])
    ids, mask = right.input_ids, right.attention_mask
    flipped_ids = torch.stack([row.roll(int((~m).sum())) for row, m in zip(ids, mask)])
    flipped_mask = torch.stack([m.roll(int((~m).sum())) for m in mask])
    empty_ids = torch.full((1, ids.shape[1]), ESM_VOCABULARY.pad_id)
    empty_mask = torch.zeros((1, ids.shape[1]), dtype=torch.bool)
    expected = run(encoder, ids, mask)
    got = run(encoder, torch.cat([flipped_ids, empty_ids]), torch.cat([flipped_mask, empty_mask]))
    assert torch.isfinite(got).all() and not got[2].any()
    for row in range(2):
        torch.testing.assert_close(got[row][flipped_mask[row]], expected[row][mask[row]],
                                   atol=2e-5, rtol=1e-5)  # fmt: skip


def test_split_path_runs_the_fused_cpu_kernel():
    # The padding-free CPU path exists to reach the flash kernel; the kernel refuses 3-d inputs
    # (torch then quietly runs the slow math path), so insist on it being taken, backward too.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    encoder = tiny_encoder().train()
    encoder.attention_backend = "split"
    batch = ESM_VOCABULARY.batch(PROTEINS)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        encoder(batch.input_ids, batch.attention_mask).square().sum().backward()
    assert encoder.embed.weight.grad is not None


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = ESM_VOCABULARY.batch(PROTEINS[:3])
    grads = []
    for recompute in (False, True):
        encoder = tiny_encoder(seed=2).train()
        encoder.gradient_checkpointing = recompute
        encoder(batch.input_ids, batch.attention_mask).square().sum().backward()
        grads.append({name: p.grad for name, p in encoder.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


# --- full size ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_600m_loads_its_checkpoint_strictly_through_the_cache(
    tiny_hub, monkeypatch, tmp_path, request
):
    """A random full-size ESM C 600M, saved as the published file, loaded as users load it.

    The tiny switch is off: ``esmc600m`` builds the real architecture, finds the file in the
    hub-layout cache, checks its sha256, memory-maps it and loads it strictly (the masked-LM
    head dropped). Saved in bf16 to halve the disk and hashing cost; loading turns it into fp32.
    ~15-40 s and ~5 GB here.
    """
    # pytest keeps the last few runs' temporary directories; not this 1.2 GB file.
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    monkeypatch.delenv("SYNNAV_TEST_TINY_BACKBONES")
    backbone = get_backbone("esmc600m")
    assert backbone.embedding_dim == 1152 and backbone.config == ESMC_600M
    started = time.monotonic()

    # Random weights, drawn in place (a fresh nn.Module would spend seconds on its own init).
    with torch.device("meta"):
        source = ESMCEncoder(ESMC_600M)
    source = source.to(torch.bfloat16).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in source.named_parameters():
            if parameter.dim() == 1 and name.endswith(".weight"):
                parameter.uniform_(0.8, 1.2, generator=generator)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)
    state = source.state_dict()
    head_shapes = {k: s for k, s in official_esmc_shapes(1152, 36).items() if k.startswith("sequence_head.")}
    head = {name: torch.randn(shape, generator=generator).to(torch.bfloat16) for name, shape in head_shapes.items()}
    checkpoint = tmp_path / "esmc_600m_2024_12_v0.pth"
    torch.save(state | head, checkpoint)
    assert sum(t.numel() for t in (state | head).values()) == ESMC_600M_CHECKPOINT_PARAMETERS
    cache_repo(tiny_hub, backbone.weights_repo, {backbone.weights_file: checkpoint})
    assert backbone.weights_cached()

    encoder = backbone.build_encoder(pretrained=True)
    loaded = encoder.state_dict()
    assert loaded.keys() == state.keys()
    for name, value in loaded.items():
        assert value.dtype == torch.float32 and value.device.type == "cpu", name
        assert torch.equal(value, state[name].float()), name
    del state, head, source

    batch = backbone.tokenize(["MKTAYIAKQRQISFVKSHFSRQ", "MEEPQSDPSV"])
    out = run(encoder, batch.input_ids, batch.attention_mask)
    assert out.shape == (2, 24, 1152)
    assert torch.isfinite(out[batch.attention_mask]).all()
    assert backbone.embedding_dim == out.shape[-1] == 1152

    elapsed = time.monotonic() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux
    print(f"full-size ESM C 600M: {elapsed:.1f} s, peak RSS {peak_gb:.1f} GB")
    assert peak_gb < 8
