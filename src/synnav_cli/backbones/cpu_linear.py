"""fp32 linear layers on CPU through oneDNN, shared by the CPU inference forwards.

torch sends fp32 ``F.linear`` on CPU to MKL's sgemm, which on the AMD EPYC build machine ran
ESM2's and ESM C's inference shapes at less than half oneDNN's rate (docs/benchmarks.md, "ESM2
forward on CPU" and "ESM C forward on CPU"). :func:`linear` takes oneDNN's linear instead,
where torch has it; everything else (autocast, bf16, other devices) keeps ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# oneDNN's linear (with fused post-ops), the op torch.compile's CPU backend emits; a private op,
# so it is looked up once and its absence falls back to F.linear. Set to None to force F.linear
# (tests, and benchmarks/peers.py's `mkl` variant).
_ONEDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available()
    else None
)


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` sends ``x @ weight.T`` to oneDNN."""
    return (
        _ONEDNN_LINEAR is not None
        and x.dtype == weight.dtype == torch.float32
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
    )


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, *, gelu: bool = False
) -> torch.Tensor:
    """``F.linear`` (then the exact GELU), through oneDNN for fp32 on CPU where torch has it.

    On the AMD EPYC build machine MKL ran ESM2-8M's shapes at 66-86 GFLOP/s against oneDNN's
    141-216 (one thread); oneDNN also applies the GELU inside the matmul.
    """
    if onednn_applies(x, weight):
        # Post-op "gelu" with algorithm "none" is the exact (erf) GELU, not the tanh one.
        post, algorithm = ("gelu", "none") if gelu else ("none", "")
        return _ONEDNN_LINEAR(x, weight, bias, post, [], algorithm)
    y = F.linear(x, weight, bias)
    return F.gelu(y) if gelu else y
