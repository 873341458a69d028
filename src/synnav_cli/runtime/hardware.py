"""Device, numeric precision and how many tokens fit in one batch (a memory model per backbone)."""

from __future__ import annotations

import platform
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from synnav_cli import console
from synnav_cli.backbones.base import Backbone
from synnav_cli.errors import UserError, quoted

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The origin's config spells precision many ways; all of them are accepted.
_PRECISION_ALIASES = {
    "32": "fp32", "float32": "fp32", "fp32": "fp32", "no": "fp32",
    "16": "fp16", "fp16": "fp16", "float16": "fp16", "16-mixed": "fp16", "half": "fp16",
    "bf16": "bf16", "bfloat16": "bf16", "bf16-mixed": "bf16", "auto": "auto",
}  # fmt: skip

# Token budgets when nothing is known about free memory (CPU). On CPU a batch costs compute, and
# small batches win: their activations stay in cache and a length-sorted batch of a few proteins
# pads little (transformers' EsmModel computes every padded slot). Measured side by side against
# the official peers (docs/benchmarks.md, "CPU prediction budget"): 1,024 tokens made ESM2-8M 3.1x
# faster than 16,384 and ESM C 300M 1.05x. The budget never drops below one protein of the model's
# maximum length, so in practice a batch holds one long protein or a few short ones.
CPU_PREDICT_TOKENS = 1024
CPU_TRAIN_TOKENS = 4096
# Share of the free accelerator memory a budget may plan for; the rest absorbs the allocator's
# fragmentation, cuBLAS workspaces and the estimate's error (an out-of-memory halves the budget).
MEMORY_FRACTION = 0.85
# Past this many tokens a batch gains nothing on any current GPU (the matrix multiplications are
# long saturated) and only holds more host memory; prediction budgets stop here.
MAX_PREDICT_TOKENS = 1 << 18
MAX_TRAIN_TOKENS = 1 << 17
# Fewer tokens than this in a training batch leaves a large GPU partly idle; a budget below it
# (or below one protein of the longest allowed length) turns gradient checkpointing on.
SATURATING_TOKENS = 4096
# Out-of-memory retries halve the budget down to this, then give up.
MIN_TOKENS = 64


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
        raise UserError(f"unknown precision {quoted(value)}; choose one of {', '.join(PRECISIONS)}")
    return _PRECISION_ALIASES[key]


def resolve_precision(device: torch.device, precision: str) -> str:
    """The precision a run on ``device`` uses.

    ``auto``: bf16 autocast where the GPU computes bf16 natively (:func:`cuda_has_native_bf16`:
    Ampere and later), fp16 autocast with loss scaling on older GPUs (V100, T4), fp32 on CPU.
    ``fp16`` asked for (the origin's config value) stays fp16 on any GPU: the user chose it.
    ``bf16`` on a GPU without native bf16 becomes fp16, with one line on stderr.
    On CPU every request becomes fp32 (training on CPU in bf16 was never measured); scoring
    has its own rule, :func:`scoring_precision`.
    """
    precision = normalise_precision(precision)
    if device.type != "cuda":
        return "fp32"
    if precision in ("auto", "bf16"):
        if cuda_has_native_bf16():
            return "bf16"
        if precision == "bf16":
            console.warn(
                "--precision bf16 needs a GPU of compute capability 8.0 (Ampere) or later; "
                "running fp16"
            )
        return "fp16"
    return precision


def cuda_has_native_bf16() -> bool:
    """Whether the current CUDA GPU computes bf16 in hardware (compute capability 8.0 and later).

    ``torch.cuda.is_bf16_supported()`` alone also counts emulation, which a V100 (sm70) or T4
    (sm75) passes: there bf16 runs far slower than fp16, and flash attention refuses it. Torch
    releases without ``including_emulation`` are asked for the capability instead.
    """
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:
        return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86: AVX512-BF16 or AMX).

    x86 asks cpuinfo through torch (``torch.cpu._is_avx512_bf16_supported``, ``_is_amx_tile_
    supported``). oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is not used
    there: it is true on any AVX-512 CPU, where bf16 is emulated and slower than fp32. On ARM that
    check asks for the BF16 extension, so it is used as it is.
    """
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i686", "x86"):
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    if machine in ("aarch64", "arm64"):
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


def scoring_precision(device: torch.device, requested: str) -> str:
    """The precision ``predict``, ``evaluate`` and ``embed`` run at on ``device``.

    ``auto``: on GPUs as :func:`resolve_precision` (bf16, or fp16 without it); fp32 elsewhere, so
    that CPU results are the official models' numbers. ``fp32``: fp32 on any device. ``bf16`` on
    a CPU that multiplies bf16 in hardware: bf16 (faster, at a measured cost in accuracy: see
    docs/benchmarks.md); on any other CPU it would be emulated and slower than fp32, so it runs
    fp32 and says so on stderr, as does ``fp16`` off CUDA (only CPUs with AMX-FP16 multiply fp16
    in hardware, and none was measured).
    """
    precision = normalise_precision(requested)
    if device.type == "cuda":
        return "fp32" if precision == "fp32" else resolve_precision(device, precision)
    if precision == "bf16" and device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    if precision in ("bf16", "fp16"):
        where = device.type
        if precision == "bf16" and device.type == "cpu":
            where = "this CPU (it has no AVX512-BF16 or AMX)"
        console.warn(f"--precision {precision} is not available on {where}; running fp32")
    return "fp32"


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling for fp16 (whose gradients underflow without it); a no-op otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def half_precision(precision: str) -> bool:
    return precision in ("bf16", "fp16")


# What an allocation failure says when it does not come as torch's out-of-memory type: the CUDA
# runtime ("CUDA error: out of memory"), MPS ("MPS backend out of memory"), and cuBLAS and cuDNN
# when their handles or workspaces, allocated outside torch's caching allocator, find no room.
_OUT_OF_MEMORY_MESSAGES = (
    "out of memory",
    "cublas_status_alloc_failed",
    "cudnn_status_alloc_failed",
    "cusolver_status_alloc_failed",
)


def is_out_of_memory(error: BaseException) -> bool:
    """An accelerator allocation failure (CUDA, cuBLAS, cuDNN, MPS or any backend that says so).

    ``torch.OutOfMemoryError`` exists from torch 2.5; before it the type is
    ``torch.cuda.OutOfMemoryError``, and either way the message is checked too.
    """
    types = tuple(
        kind
        for kind in (
            getattr(torch, "OutOfMemoryError", None),
            getattr(torch.cuda, "OutOfMemoryError", None),
        )
        if isinstance(kind, type)
    )
    if types and isinstance(error, types):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and any(m in message for m in _OUT_OF_MEMORY_MESSAGES)


def free_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class MemoryModel:
    """How many bytes a transformer backbone needs: a fixed part plus a part per token.

    Counted tensor by tensor for a pre-norm block (fused QKV, q/k LayerNorm, rotary, SDPA, a
    SwiGLU or GELU FFN of width ``ffn_hidden``), with the residual stream in fp32 (the weights stay
    fp32 under autocast) and everything else in the compute dtype:

    - fixed: 4 B a parameter for the fp32 weights, plus 2 B for autocast's half-precision copies;
      full fine-tuning adds 4 B of gradients and 8 B of AdamW moments (16 B + 2 B in all).
    - training, kept for the backward pass, per token and layer: about 13 width-sized and 4
      FFN-width tensors in the compute dtype plus two fp32 copies of the residual stream
      (ESM C 600M in bf16: 63.7 KB, i.e. 2.29 MB a token over 36 layers).
    - gradient checkpointing keeps only each block's fp32 input (4 B x width a layer) and
      recomputes one block at a time, so one layer's worth of the above is live at once.
    - inference keeps nothing: the working set of one block, 5 width- and 2 FFN-width tensors
      in the compute dtype, plus the fp32 output (ESM C 600M in bf16: 28 KB a token).

    Attention itself adds no per-token term: the packed paths run flash / memory-efficient
    kernels whose memory is linear in the tokens.

    Several processes (DistributedDataParallel) add nothing per rank: the gradients are views
    into DDP's communication buckets (``gradient_as_bucket_view``, see
    :func:`synnav_cli.train.ddp.wrap`), so there is no second fp32 copy of them. Allocator
    fragmentation is kept small by expandable segments
    (:func:`synnav_cli.runtime.allocator.prefer_expandable_segments`) and
    covered by :data:`MEMORY_FRACTION`.
    """

    params: int
    layers: int
    width: int
    ffn_hidden: int

    def fixed_bytes(self, *, training: bool, frozen: bool, precision: str) -> int:
        per_param = 4 + (2 if half_precision(precision) else 0)
        if training and not frozen:
            per_param += 12
        return self.params * per_param

    def bytes_per_token(
        self, *, training: bool, frozen: bool, precision: str, checkpointing: bool = False
    ) -> int:
        element = 2 if half_precision(precision) else 4
        working = element * (5 * self.width + 2 * self.ffn_hidden) + 4 * self.width
        if not training or frozen:
            return working
        saved = element * (13 * self.width + 4 * self.ffn_hidden) + 8 * self.width
        if checkpointing:
            return self.layers * 4 * self.width + saved + working
        return self.layers * saved + working

    def token_budget(
        self,
        free_bytes: int,
        *,
        training: bool,
        frozen: bool,
        precision: str,
        checkpointing: bool = False,
    ) -> int:
        """Tokens one batch may hold in ``free_bytes`` of accelerator memory (0: not even one)."""
        room = free_bytes * MEMORY_FRACTION - self.fixed_bytes(
            training=training, frozen=frozen, precision=precision
        )
        per_token = self.bytes_per_token(
            training=training, frozen=frozen, precision=precision, checkpointing=checkpointing
        )
        return max(0, int(room // per_token))


def memory_model(backbone: Backbone, encoder: nn.Module | None = None) -> MemoryModel:
    """The memory model of a backbone, from the shape it reports (:meth:`Backbone.encoder_shape`).

    Parameters are counted from ``encoder`` when it is given, else estimated from the shape
    (attention 4 x width^2 a layer, plus the FFN's matrices).
    """
    shape = backbone.encoder_shape()
    if encoder is not None:
        params = sum(p.numel() for p in encoder.parameters())
    else:
        params = shape.layers * (
            4 * shape.width**2 + shape.ffn_matrices * shape.width * shape.ffn_hidden
        )
    return MemoryModel(
        params=params, layers=shape.layers, width=shape.width, ffn_hidden=shape.ffn_hidden
    )


@dataclass(frozen=True)
class Budget:
    """The tokens a batch may hold, why, and which batches recompute their activations."""

    max_tokens: int
    source: str  # for people: "--max-tokens", "cpu default", "memory model: ..."
    # Training batches of more padded tokens than this use gradient checkpointing; None: none.
    recompute_above: int | None = None

    def recompute(self, tokens: int) -> bool:
        return self.recompute_above is not None and tokens > self.recompute_above


def plan_budget(
    device: torch.device,
    model: MemoryModel,
    *,
    training: bool,
    frozen: bool = False,
    precision: str = "fp32",
    min_tokens: int = 1,
    requested: int | None = None,
    checkpointing: bool | None = None,
    free_bytes: int | None = None,
) -> Budget:
    """Choose the token budget of a batch.

    ``requested`` (``--max-tokens``) wins. On CUDA the budget is what fits in the free memory
    according to ``model``. In training, ``checkpointing`` True recomputes every batch's
    activations, False none; None (automatic) lets batches grow to what fits with recomputation
    (up to :data:`MAX_TRAIN_TOKENS`) and recomputes only those batches that would not fit
    without it, so ordinary batches run at full speed and a batch of long proteins still fits.
    Elsewhere fixed budgets apply. The result is never below ``min_tokens``: a protein is never
    split across batches.
    """
    training = training and not frozen
    always = 0 if checkpointing and training else None
    if requested is not None:
        if requested < min_tokens:
            console.info(
                f"--max-tokens {requested} is less than one protein of the longest length "
                f"({min_tokens} tokens); using {min_tokens}"
            )
        return Budget(max(requested, min_tokens), "--max-tokens", always)
    if device.type != "cuda":
        tokens = CPU_TRAIN_TOKENS if training else CPU_PREDICT_TOKENS
        return Budget(max(tokens, min_tokens), f"{device.type} default", always)
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)

    def fits(recompute: bool) -> int:
        return model.token_budget(
            free_bytes,
            training=training,
            frozen=False,
            precision=precision,
            checkpointing=recompute,
        )

    def per_token(recompute: bool) -> str:
        size = model.bytes_per_token(
            training=training, frozen=False, precision=precision, checkpointing=recompute
        )
        return f"{size / 1024:.0f} KiB a token"

    how = f"memory model: {free_bytes / 2**30:.1f} GiB free, "
    if not training:
        return Budget(max(min(fits(False), MAX_PREDICT_TOKENS), min_tokens), how + per_token(False))
    if checkpointing:
        tokens = min(fits(True), MAX_TRAIN_TOKENS)
        return Budget(
            max(tokens, min_tokens), how + per_token(True) + ", gradient checkpointing", 0
        )
    plain = min(fits(False), MAX_TRAIN_TOKENS)
    stretched = min(fits(True), MAX_TRAIN_TOKENS)
    if checkpointing is False or stretched <= plain:
        return Budget(max(plain, min_tokens), how + per_token(False))
    return Budget(
        max(stretched, min_tokens),
        how + f"{per_token(False)}; gradient checkpointing for batches over {plain} tokens",
        plain,
    )


def report_budget(what: str, budget: Budget, max_batch_size: int | None = None) -> None:
    """One line on stderr: the budget chosen and where it came from.

    Said at normal verbosity when it was derived from accelerator memory or asked for; the
    fixed CPU budgets only with ``--verbose``, so that CPU output stays as it was.
    """
    proteins = f", at most {max_batch_size} proteins" if max_batch_size else ""
    say = console.detail if budget.source.endswith(" default") else console.info
    say(f"{what}: up to {budget.max_tokens} tokens a batch{proteins} ({budget.source}).")

