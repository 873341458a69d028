"""fp32 linear layers on CPU through oneDNN, shared by the CPU inference forwards.

torch sends fp32 ``F.linear`` on CPU to MKL's sgemm, which on the AMD EPYC build machine ran
ESM2's and ESM C's inference shapes at less than half oneDNN's rate (docs/benchmarks.md, "ESM2
forward on CPU" and "ESM C forward on CPU"): MKL takes a generic path on AMD CPUs. On Intel CPUs
it does not, and there MKL was the faster of the two (:data:`_ONEDNN_PAYS`). :func:`linear`
takes oneDNN's linear where torch has it and the CPU is not an Intel one; everything else
(Intel CPUs, autocast, bf16, other devices) keeps ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cpu_vendor() -> str | None:
    """The CPU's vendor string as Linux reports it ("GenuineIntel", "AuthenticAMD"); None where
    /proc/cpuinfo has none (other systems, most ARM CPUs)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def onednn_pays(vendor: str | None) -> bool:
    """Whether oneDNN's fp32 linear beats ``F.linear`` (MKL) on a CPU of ``vendor``.

    AMD EPYC, one thread: oneDNN ran ESM C's shapes at 2.2-2.7x MKL's rate, ESM2-8M's at 141-216
    GFLOP/s against 66-86.
    Intel Xeon with AVX-512 (2026-12-03, one thread, side by side): MKL 1.08x oneDNN on a whole
    ESM C 600M forward of 427 residues, 1.03-1.08x on ESM2-8M's layers. Elsewhere (unknown
    vendor) oneDNN stays, as before this was measured.
    """
    return vendor != "GenuineIntel"


# Looked up once; tests and benchmarks may set it to force either path where oneDNN exists.
_ONEDNN_PAYS = onednn_pays(cpu_vendor())

# oneDNN's linear (with fused post-ops), the op torch.compile's CPU backend emits; a private op,
# so it is looked up once and its absence falls back to F.linear. Set to None to force F.linear
# (tests, and benchmarks/peers.py's `mkl` variant).
_ONEDNN_LINEAR = (
    getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if torch.backends.mkldnn.is_available()
    else None
)


def onednn_used() -> bool:
    """Whether fp32 CPU inference goes to oneDNN at all: torch has its linear, and it pays."""
    return _ONEDNN_LINEAR is not None and _ONEDNN_PAYS


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` sends ``x @ weight.T`` to oneDNN."""
    return (
        onednn_used()
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
