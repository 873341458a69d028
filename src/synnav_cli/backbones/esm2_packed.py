"""ESM2's inference forward over transformers' ``EsmModel`` parameters, without padding.

:func:`packed_forward` computes what ``EsmModel(input_ids, attention_mask).last_hidden_state``
computes for every real token (fp32: within 1e-5 of it, tests/test_esm2_packed.py), reading the
model's own modules and weights, so checkpoints, state dicts and training are untouched. It is
faster on CPU because:

- its fp32 linear layers run on oneDNN rather than MKL, which torch's ``F.linear`` uses and
  which ran these shapes at less than half oneDNN's rate on an AMD EPYC (most of the gain
  there; on Intel CPUs MKL was the faster and is kept: :mod:`synnav_cli.backbones.cpu_linear`);
- real tokens are packed into ``[N, d]`` before the first layer, so no projection, FFN or
  attention spends work on padding (``EsmModel`` computes every padded slot of a batch);
- attention is one unmasked SDPA per protein, which runs torch's CPU flash kernel;
- q, k and v are projected in one matmul, q and k rotated in one pass with the query scale
  folded into the rotary tables, and the exact (erf) GELU is fused into its matmul (one kernel
  where transformers' ``gelu`` runs five).

It builds no autograd-friendly structure of its own and ignores gradient checkpointing, so
:class:`synnav_cli.backbones.esm2.ESM2Encoder` uses it only where no gradient is taken and on
CPU, where it was measured (docs/benchmarks.md, "ESM2 forward on CPU"); training, attributions
and CUDA keep ``EsmModel``'s own forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from synnav_cli.backbones.cpu_linear import linear as _linear

if TYPE_CHECKING:
    from transformers import EsmModel
    from transformers.models.esm.modeling_esm import EsmLayer

# The masking ratio ESM was trained with (15% of tokens chosen, 80% of those masked); transformers'
# EsmEmbeddings hard-codes the same number for its token-dropout rescaling.
_MASK_RATIO_TRAIN = 0.15 * 0.8


def supports(esm: EsmModel) -> bool:
    """Whether :func:`packed_forward` computes this model: an ESM2-style encoder (rotary
    positions, no cross-attention), which every registered ESM2 size is."""
    config = esm.config
    return (
        getattr(config, "position_embedding_type", None) == "rotary"
        and not config.is_decoder
        and not config.add_cross_attention
    )


def packed_forward(
    esm: EsmModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``[batch, length, d]`` last hidden states; zero where ``attention_mask`` is False."""
    mask = attention_mask.to(torch.bool)
    batch, length = mask.shape
    width = esm.config.hidden_size
    index = mask.flatten().nonzero().squeeze(1)
    lengths = mask.sum(dim=-1)
    if index.numel() == 0:
        return esm.embeddings.word_embeddings.weight.new_zeros(batch, length, width)
    packed_ids = input_ids.flatten()[index]
    x = _embed(esm, packed_ids, input_ids, lengths)
    # Rotary positions are column indices, as in EsmModel (for synnav's right padding, the
    # position within the protein).
    cos, sin = _rotary_tables(esm, index % length, x.dtype)
    segments = lengths[lengths > 0].tolist()
    for layer in esm.encoder.layer:
        x = _layer(layer, x, cos, sin, segments)
    x = esm.encoder.emb_layer_norm_after(x)
    if index.numel() == batch * length:  # nothing was padding: no scatter needed
        return x.view(batch, length, width)
    return x.new_zeros(batch * length, width).index_copy(0, index, x).view(batch, length, width)


def _embed(
    esm: EsmModel, packed_ids: torch.Tensor, input_ids: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """EsmEmbeddings on the packed tokens, with its token-dropout rescaling (by the share of
    ``<mask>`` tokens of each protein; with none, a plain multiplication by 1 - 0.12)."""
    embeddings = esm.embeddings
    x = embeddings.word_embeddings(packed_ids)
    if embeddings.token_dropout:
        masked = packed_ids == embeddings.mask_token_id
        x = x.masked_fill(masked.unsqueeze(-1), 0.0) * (1 - _MASK_RATIO_TRAIN)
        if bool(masked.any()):
            per_row = (input_ids == embeddings.mask_token_id).sum(-1).float() / lengths
            per_token = (1 - per_row[lengths > 0]).repeat_interleave(lengths[lengths > 0])
            x = (x / per_token[:, None]).to(x.dtype)
    if embeddings.layer_norm is not None:
        x = embeddings.layer_norm(x)
    return x


def _rotary_tables(
    esm: EsmModel, positions: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin shaped ``[N, 2, 1, d_head]``: row 0 rotates q, row 1 k.

    ESM scales q by d_head^-0.5 before rotating it; rotation is linear, so the scale goes into
    q's tables instead of a pass over q. sin carries rotate_half's sign (``-`` on the first
    half), so a rotation is ``x * cos + swap_halves(x) * sin``. The tables are rounded to the
    hidden states' dtype as EsmRotaryEmbedding rounds them, then used in fp32 as
    ``apply_rotary_pos_emb`` does.
    """
    inv_freq = esm.rotary_embeddings.inv_freq
    freqs = positions[:, None].float() * inv_freq.float()
    angles = torch.cat((freqs, freqs), dim=-1)
    cos, sin = angles.cos().to(dtype).float(), angles.sin().to(dtype).float()
    half = sin.shape[-1] // 2
    sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    d_head = esm.config.hidden_size // esm.config.num_attention_heads
    scale = torch.tensor([d_head**-0.5, 1.0], dtype=torch.float32, device=cos.device)
    scale = scale[None, :, None, None]
    return cos[:, None, None, :] * scale, sin[:, None, None, :] * scale


def _layer(
    layer: EsmLayer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: list[int]
) -> torch.Tensor:
    """One EsmLayer (pre-LayerNorm attention, then pre-LayerNorm GELU FFN) on packed tokens."""
    attention = layer.attention
    heads = attention.self.num_attention_heads
    projections = (attention.self.query, attention.self.key, attention.self.value)
    hidden = attention.LayerNorm(x)
    # One matmul for q, k and v. The concatenated weight is rebuilt each call (a few hundred KB
    # a layer), so it can never go stale when the model's weights change.
    weight = torch.cat([p.weight for p in projections])
    bias = torch.cat([p.bias for p in projections])
    qkv = _linear(hidden, weight, bias).unflatten(-1, (3, heads, -1))  # [N, 3, H, Dh]
    qk, v = qkv[:, :2], qkv[:, 2]
    rotated = (qk.float() * cos + _swap_halves(qk.float()) * sin).to(v.dtype)
    context = _attend(rotated[:, 0], rotated[:, 1], v, segments)
    x = _dense(attention.output.dense, context.flatten(-2)) + x
    hidden = _dense(layer.intermediate.dense, layer.LayerNorm(x), gelu=True)
    return _dense(layer.output.dense, hidden) + x


def _dense(module: torch.nn.Linear, x: torch.Tensor, *, gelu: bool = False) -> torch.Tensor:
    return _linear(x, module.weight, module.bias, gelu=gelu)


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    first, second = t.chunk(2, dim=-1)
    return torch.cat((second, first), dim=-1)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, segments: list[int]) -> torch.Tensor:
    """Attention within each protein; q, k, v and the result are ``[N, H, d_head]``.

    One SDPA per protein: no mask, so torch's CPU flash kernel runs (given 4-d inputs;
    3-d ones fall back to its math path). The query is already scaled, hence ``scale=1``.
    """

    def heads_first(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).unsqueeze(0)

    parts = [
        F.scaled_dot_product_attention(heads_first(qi), heads_first(ki), heads_first(vi), scale=1.0)
        for qi, ki, vi in zip(q.split(segments), k.split(segments), v.split(segments))
    ]
    if len(parts) == 1:
        return parts[0][0].transpose(0, 1)
    return torch.cat([part[0].transpose(0, 1) for part in parts])
