"""ESM C (EvolutionaryScale's ESM Cambrian) as a plain-torch encoder.

The module tree mirrors the published checkpoints (``esmc_300m_2024_12_v0.pth``,
``esmc_600m_2024_12_v0.pth``), so their state dicts load with ``strict=True`` once the masked-LM
head is dropped. The forward returns what the reference model calls ``embeddings``: the final
LayerNorm's output for every token. Per-layer hidden states are not kept.

Padding never changes a real token's embedding: rotary positions count real tokens only (so
they restart at 0 for every protein wherever its padding is), and attention never crosses from
one protein to another or onto padding. Four attention paths, selected by
:attr:`ESMCEncoder.attention_backend`:

``"padded"``
    The batch stays ``[B, L, D]``; SDPA gets a boolean key-padding mask. Runs everywhere, but
    every layer also computes the padding.
``"split"``
    Real tokens are packed into ``[N, D]``, so that no projection or FFN spends work on
    padding, and attention is one unmasked SDPA per protein. The padding-free path for CPU,
    where with mixed lengths it saves time in proportion to the padding it skips.
``"varlen"``
    The same packing; attention is flash attention over cumulative sequence lengths
    (``torch.nn.attention.varlen.varlen_attn``: recent torch, CUDA sm80 and later, fp16/bf16).
``"nested"``
    The same packing; attention is SDPA on a jagged nested tensor viewing the packed tokens.
    On CUDA that reaches the varlen flash / memory-efficient kernels, fp32 included; on CPU
    torch runs it through its slow math fallback.
``"auto"`` (default)
    ``"varlen"`` on CUDA sm80+ in half precision when torch has it, ``"padded"`` elsewhere on
    CUDA (a V100 or T4 included: SDPA's memory-efficient kernel), ``"split"`` on CPU.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from synnav_cli.backbones import esmc_cpu
from synnav_cli.backbones.esmc_cpu import Dense
from synnav_cli.errors import UserError

# torch.nn.attention.varlen imports torch._dynamo, seconds of every run's start on a busy CPU,
# and only CUDA uses it: looked up on first use (_varlen). None: a torch without it.
varlen_attn: Callable | None | bool = False


def _varlen() -> Callable | None:
    global varlen_attn
    if varlen_attn is False:
        try:
            from torch.nn.attention.varlen import varlen_attn as found
        except ImportError:  # torch releases before varlen attention was public
            found = None
        varlen_attn = found
    return varlen_attn


__all__ = ["ATTENTION_BACKENDS", "ESMC_300M", "ESMC_600M", "ESMC_TINY"]
__all__ += ["IGNORED_CHECKPOINT_PREFIXES", "CheckpointMismatch", "ESMCConfig", "ESMCEncoder"]

ATTENTION_BACKENDS = ("auto", "padded", "varlen", "nested", "split")

# The published checkpoints carry the masked-LM head (`sequence_head`: Linear, GELU, LayerNorm,
# Linear to 64 logits, ~1.4M parameters at 600M). Embeddings are read before it, so the encoder
# does not build it and loading drops these keys instead of reporting them as unexpected.
IGNORED_CHECKPOINT_PREFIXES = ("sequence_head.",)

_ROTARY_BASE = 10000.0

# Older torch has no min_seqlen/max_seqlen here; passing them spares the CUDA kernels a
# device-to-host sync per layer to rediscover the longest protein.
_NJT_TAKES_SEQLENS = (
    "max_seqlen" in inspect.signature(torch.nested.nested_tensor_from_jagged).parameters
)


@dataclass(frozen=True)
class ESMCConfig:
    """Shape of an ESM C model. ``vocab_size`` is the embedding table's rows (64 in the
    checkpoints, of which the ESM vocabulary uses 33)."""

    d_model: int
    n_heads: int
    n_layers: int
    vocab_size: int = 64

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.d_head % 2:
            raise ValueError(f"rotary embeddings need an even head width, got {self.d_head}")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be at least 1, got {self.n_layers}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden(self) -> int:
        # 8/3 * d_model rounded up to a multiple of 256, after dropping the fraction of 8d/3 as
        # the checkpoints' own rule does (it differs from a true ceiling only for d_model whose
        # 8d/3 falls within 1 above a multiple of 256). Integer arithmetic keeps it exact.
        return (8 * self.d_model // 3 + 255) // 256 * 256

    @property
    def residual_scale(self) -> float:
        # Both residual branches are divided by this; 1 at the 36-layer depth the rule was
        # calibrated on, so shallower stacks take larger steps.
        return math.sqrt(self.n_layers / 36)


ESMC_300M = ESMCConfig(d_model=960, n_heads=15, n_layers=30)
ESMC_600M = ESMCConfig(d_model=1152, n_heads=18, n_layers=36)
ESMC_TINY = ESMCConfig(d_model=64, n_heads=4, n_layers=2)  # for tests: same code, tiny shapes


class CheckpointMismatch(UserError):
    """A state dict that does not fit the encoder it is loaded into (wrong file or config)."""


def _rotary_tables(positions: torch.Tensor, d_head: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for each position, shaped ``[*positions.shape, 1, d_head]`` (the 1 spans
    heads). Angles are computed in fp32 whatever the model's dtype: in bf16, neighbouring
    positions past a few hundred would round to the same angle."""
    inv_freq = 1.0 / _ROTARY_BASE ** (
        torch.arange(0, d_head, 2, device=positions.device, dtype=torch.float32) / d_head
    )
    angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
    # Non-interleaved (GPT-NeoX) layout: frequency i rotates the pair (i, i + d_head/2).
    angles = torch.cat((angles, angles), dim=-1).unsqueeze(-2)
    return angles.cos(), angles.sin()


def _apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat((-second, first), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# An "attend" function takes q, k, v shaped [..., tokens, heads, d_head] in the layout of the
# hidden states (padded [B, L, H, Dh] or packed [N, H, Dh]) and returns the context the same way.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _attend_padded(q, k, v, *, key_mask: torch.Tensor) -> torch.Tensor:
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, Dh]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask).transpose(1, 2)


def _attend_varlen(q, k, v, *, cu_seqlens: torch.Tensor, max_len: int) -> torch.Tensor:
    # Only the seven positional arguments, which every torch release with varlen_attn accepts;
    # its default scale is 1/sqrt(d_head), as in SDPA.
    return _varlen()(q, k, v.contiguous(), cu_seqlens, cu_seqlens, max_len, max_len)


def _attend_split(q, k, v, *, lengths: list[int]) -> torch.Tensor:
    # One SDPA per protein: no mask, so the CPU flash kernel runs, and no padding is computed.
    # The Python loop is over proteins, not tokens; its overhead is microseconds per protein.
    # The kernel takes only 4-d inputs ([1, H, n, Dh]): given 3-d ones, torch falls back to its
    # math path, 3-15x slower here on these shapes.
    def heads_first(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).unsqueeze(0)

    parts = [
        F.scaled_dot_product_attention(heads_first(qi), heads_first(ki), heads_first(vi))[0]
        for qi, ki, vi in zip(q.split(lengths), k.split(lengths), v.split(lengths))
    ]
    return torch.cat([part.transpose(0, 1) for part in parts])


def _attend_nested(q, k, v, *, offsets: torch.Tensor, min_len: int, max_len: int) -> torch.Tensor:
    extra = {"min_seqlen": min_len, "max_seqlen": max_len} if _NJT_TAKES_SEQLENS else {}

    def jagged(t: torch.Tensor) -> torch.Tensor:
        # A view of the packed tokens, [B, j, H, Dh] -> [B, H, j, Dh]; nothing is copied.
        return torch.nested.nested_tensor_from_jagged(t, offsets, **extra).transpose(1, 2)

    context = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v.contiguous()))
    return context.transpose(1, 2).values()


class _Attention(nn.Module):
    def __init__(self, config: ESMCConfig) -> None:
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        # One matmul yields q, k and v; the LayerNorm before it is the block's pre-norm.
        self.layernorm_qkv = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 3 * d, bias=False))
        self.out_proj = nn.Linear(d, d, bias=False)
        # q/k LayerNorms span all heads together (d_model wide), before the split into heads.
        self.q_ln = nn.LayerNorm(d, bias=False)
        self.k_ln = nn.LayerNorm(d, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend, dense: Dense
    ) -> torch.Tensor:
        norm, qkv = self.layernorm_qkv
        q, k, v = dense(qkv, norm(x)).chunk(3, dim=-1)
        # Under autocast LayerNorm answers in fp32; attention wants q, k, v in one dtype.
        q = self.q_ln(q).to(v.dtype).unflatten(-1, (self.n_heads, -1))
        k = self.k_ln(k).to(v.dtype).unflatten(-1, (self.n_heads, -1))
        v = v.unflatten(-1, (self.n_heads, -1))
        context = attend(_apply_rotary(q, cos, sin), _apply_rotary(k, cos, sin), v)
        return dense(self.out_proj, context.flatten(-2))


class _SwiGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.silu(gate) * value


class _Block(nn.Module):
    def __init__(self, config: ESMCConfig) -> None:
        super().__init__()
        d, hidden = config.d_model, config.ffn_hidden
        self.attn = _Attention(config)
        # Indices 0, 1, 3 carry the checkpoint's ffn.* keys; 2 is the parameter-free SwiGLU.
        self.ffn = nn.Sequential(
            nn.LayerNorm(d),
            nn.Linear(d, 2 * hidden, bias=False),
            _SwiGLU(),
            nn.Linear(hidden, d, bias=False),
        )
        self.residual_scale = config.residual_scale

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend, dense: Dense
    ) -> torch.Tensor:
        x = x + self.attn(x, cos, sin, attend, dense) / self.residual_scale
        norm, up, swiglu, down = self.ffn
        return x + dense(down, swiglu(dense(up, norm(x)))) / self.residual_scale


class _TransformerStack(nn.Module):
    """Holds the blocks and the final norm under the checkpoint's ``transformer.*`` names."""

    def __init__(self, config: ESMCConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model, bias=False)


class ESMCEncoder(nn.Module):
    """ESM C up to its final LayerNorm: ``forward(input_ids, attention_mask)`` returns
    ``[B, L, d_model]`` per-token embeddings, zero where ``attention_mask`` is False.

    Attributes that may be set after construction:
        gradient_checkpointing: recompute each block in the backward pass instead of keeping
            its activations (only while training with gradients enabled).
        attention_backend: one of :data:`ATTENTION_BACKENDS` (see the module docstring).
        onednn_linear: on CPU, in fp32 and without gradients, run the linear layers on oneDNN
            (:mod:`synnav_cli.backbones.esmc_cpu`); False keeps the modules' own calls.
    """

    def __init__(self, config: ESMCConfig, *, attention_backend: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.transformer = _TransformerStack(config)
        self.gradient_checkpointing = False
        self.onednn_linear = True
        self.attention_backend = attention_backend

    @property
    def attention_backend(self) -> str:
        return self._attention_backend

    @attention_backend.setter
    def attention_backend(self, value: str) -> None:
        if value not in ATTENTION_BACKENDS:
            raise ValueError(
                f"unknown attention backend {value!r}; "
                f"choose one of {', '.join(ATTENTION_BACKENDS)}"
            )
        self._attention_backend = value

    def resolved_attention_backend(self, device: torch.device, dtype: torch.dtype) -> str:
        """The path a forward on ``device`` with activations in ``dtype`` takes."""
        if self._attention_backend != "auto":
            return self._attention_backend
        if (
            device.type == "cuda"
            and dtype in (torch.float16, torch.bfloat16)
            and _varlen() is not None
            and torch.cuda.get_device_capability(device) >= (8, 0)  # flash refuses sm70, sm75
        ):
            return "varlen"
        return "padded" if device.type == "cuda" else "split"

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                "input_ids and attention_mask must both be [batch, length], got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        mask = attention_mask.to(torch.bool)
        dtype = self.embed.weight.dtype
        if torch.is_autocast_enabled(input_ids.device.type):
            dtype = torch.get_autocast_dtype(input_ids.device.type)
        backend = self.resolved_attention_backend(input_ids.device, dtype)
        if backend == "varlen" and _varlen() is None:
            raise RuntimeError("attention_backend 'varlen' needs torch.nn.attention.varlen")
        # Rotary positions count real tokens only, so every protein starts at 0 however it is
        # padded (with right padding, the usual case, this is the plain column index).
        positions = (mask.cumsum(dim=-1) - 1).clamp_min(0)
        if backend == "padded":
            return self._forward_padded(input_ids, mask, positions)
        return self._forward_packed(input_ids, mask, positions, backend)

    def _forward_padded(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor
    ) -> torch.Tensor:
        # Real queries see only real keys of their own row. A row with no real token at all
        # would have nothing to attend to and turn NaN, and a NaN value poisons every query
        # (0 * NaN); such a row attends to itself instead, and is zeroed at the end anyway.
        key_mask = mask | ~mask.any(dim=-1, keepdim=True)
        attend = partial(_attend_padded, key_mask=key_mask[:, None, None, :])
        cos, sin = _rotary_tables(positions, self.config.d_head)
        x = self._run_blocks(self.embed(input_ids), cos, sin, attend)
        return self.transformer.norm(x).masked_fill(~mask.unsqueeze(-1), 0.0)

    def _forward_packed(
        self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, backend: str
    ) -> torch.Tensor:
        batch, length = mask.shape
        d_model = self.config.d_model
        # Row-major order keeps each protein's tokens contiguous and in order.
        index = mask.flatten().nonzero().squeeze(1)
        lengths = mask.sum(dim=-1)
        lengths = lengths[lengths > 0]  # an empty row packs to nothing and needs no segment
        if index.numel() == 0:
            return self.embed.weight.new_zeros(batch, length, d_model)
        offsets = F.pad(lengths.cumsum(dim=0), (1, 0))
        max_len = int(lengths.max())
        if backend == "varlen":
            attend = partial(_attend_varlen, cu_seqlens=offsets.to(torch.int32), max_len=max_len)
        elif backend == "split":
            attend = partial(_attend_split, lengths=lengths.tolist())
        else:
            attend = partial(
                _attend_nested, offsets=offsets, min_len=int(lengths.min()), max_len=max_len
            )
        cos, sin = _rotary_tables(positions.flatten()[index], self.config.d_head)
        x = self._run_blocks(self.embed(input_ids.flatten()[index]), cos, sin, attend)
        x = self.transformer.norm(x)
        out = x.new_zeros(batch * length, d_model).index_copy(0, index, x)
        return out.view(batch, length, d_model)

    def _run_blocks(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend
    ) -> torch.Tensor:
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        dense = esmc_cpu.dense_for(x) if self.onednn_linear else esmc_cpu.module_call
        for block in self.transformer.blocks:
            if recompute:
                x = checkpoint(block, x, cos, sin, attend, dense, use_reentrant=False)
            else:
                x = block(x, cos, sin, attend, dense)
        return x

    def load_official_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], *, assign: bool = False
    ) -> None:
        """Load a reference ESM C state dict (keys as in ``esmc_*_v0.pth``).

        Keys under :data:`IGNORED_CHECKPOINT_PREFIXES` are dropped; everything else must
        match by name and shape, or :class:`CheckpointMismatch` lists what does not.
        ``assign=True`` adopts the given tensors instead of copying them (for a model built on
        the meta device, so that a large checkpoint is never held twice).
        """
        kept = {
            k: v for k, v in state_dict.items() if not k.startswith(IGNORED_CHECKPOINT_PREFIXES)
        }
        expected = self.state_dict(keep_vars=True)
        missing = sorted(expected.keys() - kept.keys())
        unexpected = sorted(kept.keys() - expected.keys())
        wrong_shape = sorted(
            f"{key} {tuple(kept[key].shape)} (model: {tuple(expected[key].shape)})"
            for key in kept.keys() & expected.keys()
            if kept[key].shape != expected[key].shape
        )
        if missing or unexpected or wrong_shape:
            raise CheckpointMismatch(
                f"state dict does not fit ESM C {self.config}: "
                + "; ".join(
                    _listing(what, keys)
                    for what, keys in (
                        ("missing", missing),
                        ("unexpected", unexpected),
                        ("wrong shape", wrong_shape),
                    )
                    if keys
                )
            )
        self.load_state_dict(kept, strict=True, assign=assign)


def _listing(what: str, keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return f"{len(keys)} {what}: {shown}{more}"
