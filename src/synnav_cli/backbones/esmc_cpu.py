"""ESM C's linear layers on oneDNN for CPU inference in fp32.

:class:`synnav_cli.backbones.esmc_model.ESMCEncoder` applies every linear layer (the fused
q/k/v projection, ``out_proj`` and the SwiGLU FFN's two) through a "dense" function picked once
per forward by :func:`dense_for`. Without gradients, on CPU, in fp32 and outside autocast that
is :func:`onednn_call`: the same weights through :func:`synnav_cli.backbones.cpu_linear.linear`,
which on the AMD EPYC build machine ran ESM C's shapes at 2.2-2.7x MKL's rate (docs/
benchmarks.md, "ESM C forward on CPU"). Everything else - Intel CPUs, where MKL is the faster
(:func:`synnav_cli.backbones.cpu_linear.onednn_used` is False), training, ``--explain`` (both
need gradients), bf16, CUDA - keeps the modules' own calls (:func:`module_call`), as does
``ESMCEncoder.onednn_linear = False``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from synnav_cli.backbones import cpu_linear

# A "dense" function applies one of the model's linear layers to x: the module's own call, or
# (CPU inference in fp32) oneDNN's linear on the same weights.
Dense = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def module_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return module(x)


def onednn_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` with a plain fp32 ``nn.Linear`` run on oneDNN; any other module (a
    quantised or wrapped one) or input keeps its own call."""
    if type(module) is nn.Linear and cpu_linear.onednn_applies(x, module.weight):
        return cpu_linear.linear(x, module.weight, module.bias)
    return module(x)


def dense_for(x: torch.Tensor) -> Dense:
    """The dense function for a forward whose hidden states start as ``x``."""
    if (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and cpu_linear.onednn_used()
    ):
        return onednn_call
    return module_call
