"""Device, numeric precision and how many tokens fit in one batch."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from synnav_cli.errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The origin's config spells precision many ways; all of them are accepted.
_PRECISION_ALIASES = {
    "32": "fp32", "float32": "fp32", "fp32": "fp32", "no": "fp32",
    "16": "fp16", "fp16": "fp16", "float16": "fp16", "16-mixed": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16", "auto": "auto",
}  # fmt: skip

# Token budgets when nothing is known about free memory (CPU). On CPU the cost of a batch is
# compute, not memory, so a moderate budget is enough to keep the cores busy.
CPU_PREDICT_TOKENS = 16384
CPU_TRAIN_TOKENS = 4096


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device {requested!r}; try auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but this torch build sees no CUDA GPU")
    return device


def normalise_precision(value: str | int) -> str:
    key = str(value).strip().lower()
    if key not in _PRECISION_ALIASES:
        raise UserError(f"unknown precision {value!r}; choose one of {', '.join(PRECISIONS)}")
    return _PRECISION_ALIASES[key]


def resolve_precision(device: torch.device, precision: str) -> str:
    """``auto``: bf16 where the GPU has it, fp16 on older GPUs, fp32 on CPU.

    fp16 asked for on a GPU with bf16 stays fp16 (with loss scaling): the user chose it.
    On CPU every request becomes fp32, since CPU autocast is slower than fp32 here.
    """
    precision = normalise_precision(precision)
    if device.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def default_token_budget(device: torch.device, *, embedding_dim: int, training: bool) -> int:
    """Tokens per batch from free accelerator memory; fixed budgets on CPU.

    The estimate is deliberately generous: an out-of-memory error splits the batch and
    retries, so a budget that is too large costs one retry, one that is too small costs speed.
    """
    if device.type != "cuda":
        return CPU_TRAIN_TOKENS if training else CPU_PREDICT_TOKENS
    free, _total = torch.cuda.mem_get_info(device)
    # Activations per token grow with width; training keeps every layer's activations.
    per_token = embedding_dim * (600 if training else 40)
    budget = int(free * 0.8 / per_token)
    return max(1024, min(budget, 1 << 20))

