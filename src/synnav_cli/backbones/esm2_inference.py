"""ESM2 for inference on CPU without transformers: the modules the packed forward reads.

:func:`synnav_cli.backbones.esm2_packed.packed_forward` reads an ``EsmModel``'s embedding,
layers and final LayerNorm and nothing else. Importing transformers and building ``EsmModel``
to hold those weights took 3-5 s of a small ``synnav embed -b esm2_8m`` run whose forwards take
about 1 s (docs/benchmarks.md, "A small job, whole processes"). :class:`ESM2Modules` is the same
tree of modules under the same names (``embeddings.word_embeddings``,
``encoder.layer.N.attention.self.query`` ...), built with torch alone and filled straight from
the checkpoint, so the packed forward computes the very same numbers from it.

Training, attributions and other devices need ``EsmModel``'s own forward (gradient
checkpointing, padded batches on GPUs) and keep it: only :meth:`ESM2.build_inference_encoder`
on CPU builds this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from synnav_cli.backbones import esm2_packed
from synnav_cli.backbones.base import no_weight_init
from synnav_cli.errors import UserError

# ESM2's vocabulary and special tokens, as every published config.json gives them.
VOCABULARY_SIZE = 33
MASK_TOKEN_ID = 32
PAD_TOKEN_ID = 1
LAYER_NORM_EPS = 1e-5
ROPE_THETA = 10000.0


@dataclass(frozen=True)
class ESM2InferenceConfig:
    """The few ``EsmConfig`` fields the packed forward reads, under the same names."""

    hidden_size: int
    num_attention_heads: int
    position_embedding_type: str = "rotary"
    is_decoder: bool = False
    add_cross_attention: bool = False


class _Embeddings(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCABULARY_SIZE, width, padding_idx=PAD_TOKEN_ID)
        # Every ESM2 size: token dropout on, no LayerNorm before the first layer.
        self.token_dropout = True
        self.mask_token_id = MASK_TOKEN_ID
        self.layer_norm = None


class _Projections(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.num_attention_heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)


class _Dense(nn.Module):
    def __init__(self, width_in: int, width_out: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width_out)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.self = _Projections(width, heads)
        self.output = _Dense(width, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.attention = _Attention(width, heads)
        self.intermediate = _Dense(width, ffn)
        self.output = _Dense(ffn, width)
        self.LayerNorm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)


class _Stack(nn.Module):
    def __init__(self, width: int, heads: int, ffn: int, layers: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(width, heads, ffn) for _ in range(layers))
        self.emb_layer_norm_after = nn.LayerNorm(width, eps=LAYER_NORM_EPS)


class _Rotary(nn.Module):
    def __init__(self, head_width: int) -> None:
        super().__init__()
        # transformers' EsmRotaryEmbedding computes the same frequencies (and keeps them out of
        # the checkpoint too). On the CPU even when the rest is built on the meta device: they
        # are not in the checkpoint, and torch's meta arange imports torch._dynamo (2.5 s).
        steps = torch.arange(0, head_width, 2, dtype=torch.float, device="cpu") / head_width
        self.register_buffer("inv_freq", 1.0 / (ROPE_THETA**steps), persistent=False)


class ESM2Modules(nn.Module):
    """What ``EsmModel`` holds for the packed forward, parameter for parameter."""

    def __init__(self, width: int, layers: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.config = ESM2InferenceConfig(width, heads)
        self.embeddings = _Embeddings(width)
        self.encoder = _Stack(width, heads, ffn, layers)
        self.rotary_embeddings = _Rotary(width // heads)


class ESM2InferenceEncoder(nn.Module):
    """``forward(input_ids, attention_mask)`` -> last hidden states ``[batch, length, d]``, zero
    on padding; the packed forward over :class:`ESM2Modules` (held as ``esm``, as
    :class:`synnav_cli.backbones.esm2.ESM2Encoder` holds ``EsmModel``, so the names match)."""

    def __init__(self, modules: ESM2Modules) -> None:
        super().__init__()
        self.esm = modules

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return esm2_packed.packed_forward(self.esm, input_ids, attention_mask)


def build(
    width: int,
    layers: int,
    heads: int,
    ffn: int,
    checkpoint: dict[str, torch.Tensor],
    *,
    ignored: re.Pattern[str],
    misfit: str,
) -> ESM2InferenceEncoder:
    """The encoder holding ``checkpoint``'s tensors (a published ESM2 state dict: keys under
    ``esm.`` or bare). Keys that ``ignored`` matches are dropped; any other key the
    encoder lacks, any weight the checkpoint lacks and any shape that differs is a UserError
    that starts with ``misfit`` (which names the file and the backbone)."""
    # Built on the meta device: the checkpoint's tensors replace the parameters, so random
    # values would be computed only to be thrown away.
    with torch.device("meta"), no_weight_init():
        modules = ESM2Modules(width, layers, heads, ffn)
    expected = modules.state_dict()
    state: dict[str, torch.Tensor] = {}
    problems = []
    for key, tensor in checkpoint.items():
        if ignored.search(key):
            continue
        name = key.removeprefix("esm.")
        if name not in expected:
            problems.append(f"unexpected {key}")
        elif tensor.shape != expected[name].shape:
            problems.append(f"mis-shaped {key}")
        elif not tensor.is_floating_point():
            # An integer tensor would be cast without a word, and the model would then score
            # every protein alike.
            problems.append(f"non-float {key} ({tensor.dtype})")
        else:
            state[name] = tensor.float()
    problems += [f"missing esm.{name}" for name in sorted(set(expected) - set(state))]
    if problems:
        raise UserError(
            f"{misfit}: {len(problems)} weights missing, unexpected, mis-shaped or not floats "
            f"(first: {problems[0]})"
        )
    modules.load_state_dict(state, strict=True, assign=True)
    return ESM2InferenceEncoder(modules).eval()


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors checkpoint's tensors (the format holds no code: nothing is unpickled)."""
    from safetensors.torch import load_file

    return load_file(str(path))
