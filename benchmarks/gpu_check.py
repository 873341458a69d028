"""One prepared GPU measurement of synnav: ``python benchmarks/gpu_check.py --out results.json``.

Runs in about six minutes on one H100/H200 with random full-size weights (throughput does not
depend on weight values) and no network, from the repository root with ``PYTHONPATH=src``:

``roofline``           large bf16 and fp32 ``torch.mm``: the peak these kernels reach here, beside
                       the data-sheet peak of the detected GPU; every MFU is given against both
``attention_paths``    ESM C 600M embeddings of the same mixed-length proteins through each
                       attention path (varlen, split, padded, nested) in bf16, compared with each
                       other and with fp32, and each path's speed
``memory_predict``     the memory model's bytes for an inference batch against
                       ``torch.cuda.max_memory_allocated`` (two batch sizes: slope and intercept)
``predict_esmc600m``   prediction throughput (``predict_records``, synnav's own budget and batching)
``predict_esm2_8m``    on a proteome-like length distribution, extrapolated to 11M residues
``out_of_memory``      a budget far too high under a capped memory pool: predict must recover
``compile``            ``torch.compile`` of each transformer block on/off, warm-up and steady state
``train_bf16``         ESM C 600M full fine-tuning steps at the origin's settings (batches of 8,
``train_fp16``         lr 1e-4, proteins up to 1,800 residues), extrapolated to 30 epochs of 4,600
``memory_train``       the memory model for training (fixed + per token) against the measured peak

Each section runs under its own time limit and inside its own guard: a failure or a timeout is
recorded in the JSON (``status``, ``error``) and the next section runs. ``--smoke`` runs every
section's code on CPU with tiny models and sizes in well under two minutes (CI runs it, so this
script cannot rot); CUDA-only measurements are then recorded as skipped, and the out-of-memory
section injects the error instead of provoking it.

``python benchmarks/gpu_check.py --markdown results.json`` prints the summary table of a results
file for docs/benchmarks.md.

FLOP model (per protein of ``n`` tokens, ``P`` = weights of the encoder's linear layers, ``L``
layers of width ``d``): forward ``2 P n + 4 L d n^2``; training 3x the forward. Only real tokens
count, so padding and recomputation (gradient checkpointing) lower the MFU.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# The package surface this script depends on (keep it small: src/ is being restructured):
#   hardware: resolve_precision, autocast, grad_scaler, memory_model (MemoryModel), plan_budget,
#             plan_budget; Backbone.set_gradient_checkpointing, Backbone.tokens
#   get_backbone(name) -> Backbone: build_encoder(pretrained=False), tokenize, embedding_dim,
#             max_length; ESM C encoders also: attention_backend, resolved_attention_backend
#   predict_records, Runtime, FastaRecord: synnav's prediction path (with its out-of-memory backoff)
#   LocalizationModel, masked_bce, training_batches: what a training step is made of
try:
    from synnav_cli.data.fasta import FastaRecord
    from synnav_cli.model import LocalizationModel, masked_bce
    from synnav_cli.plugins import get_backbone
    from synnav_cli.predict.run import predict_records
    from synnav_cli.runtime import hardware
    from synnav_cli.scoring.batches import training_batches
    from synnav_cli.scoring.score import Runtime
except ImportError as missing:  # a bare GPU machine: torch alone is not enough
    raise SystemExit(
        f"gpu_check: cannot import {missing.name!r}. Run from the repository root with "
        "PYTHONPATH=src, in an environment with synnav's dependencies (pyproject.toml; without a "
        "network: pip download them elsewhere and pip install --no-index --find-links DIR)."
    ) from None

NUM_LABELS = 6  # the origin's six compartments
PROTEOME_RESIDUES = 11_000_000  # the human proteome, ~20k proteins
PROTEOME_TARGET_S = 40.0
TRAIN_EPOCHS, TRAIN_PROTEINS = 30, 4600
TRAIN_TARGET_S = 12 * 60.0
ORIGIN_MAX_LENGTH = 1800  # the origin's training cut
ORIGIN_BATCH, ORIGIN_LR = 8, 1e-4
ATTENTION_PATHS = ("varlen", "split", "padded", "nested")
# Dense bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s, matched against
# torch.cuda.get_device_name() most specific first; --peak-tflops overrides.
SPEC_BF16_TFLOPS = (
    ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0),
    ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0),
    ("A10", 125.0), ("RTX 4090", 165.0),
)  # fmt: skip


@dataclass(frozen=True)
class Profile:
    """Sizes of one kind of run: the full GPU check or the CPU smoke run."""

    esmc: str  # backbone names as registered
    esm2: str
    median_length: int  # log-normal protein lengths (see protein_lengths)
    max_length: int
    mm_size: int  # square matrix side for the roofline
    pilot: int  # proteins of the warm-up / rate-estimating run
    window_s: float  # how long a throughput measurement aims to run
    pool: int  # proteins available to a throughput measurement
    paths_proteins: int  # proteins compared across attention paths
    memory_tokens: tuple[int, int]  # inference batch sizes for the memory model
    train_steps: int  # timed optimizer steps (after 2 of warm-up)
    train_memory_tokens: tuple[int, int]
    oom_pool_gib: float  # memory left to predict under the capped pool (CUDA)
    oom_proteins: int
    compile_proteins: int
    compile_backend: str
    limits: dict  # seconds per section


GPU = Profile(
    esmc="esmc600m", esm2="esm2_8m", median_length=415, max_length=2048, mm_size=8192, pilot=256,
    window_s=20.0, pool=20000, paths_proteins=48, memory_tokens=(32768, 131072), train_steps=40,
    train_memory_tokens=(4096, 12288), oom_pool_gib=6.0, oom_proteins=600, compile_proteins=512,
    compile_backend="inductor",
    limits={"roofline": 20, "attention_paths": 45, "memory_predict": 30, "predict_esmc600m": 60,
            "predict_esm2_8m": 30, "out_of_memory": 40, "compile": 100, "train_bf16": 60,
            "train_fp16": 50, "memory_train": 30},
)  # fmt: skip
SMOKE = Profile(
    esmc="esmc600m", esm2="esm2_8m", median_length=60, max_length=200, mm_size=256, pilot=6,
    window_s=1.0, pool=64, paths_proteins=6, memory_tokens=(512, 2048), train_steps=3,
    train_memory_tokens=(256, 1024), oom_pool_gib=0.0, oom_proteins=12, compile_proteins=6,
    compile_backend="aot_eager",
    limits={"roofline": 10, "attention_paths": 20, "memory_predict": 10, "predict_esmc600m": 20,
            "predict_esm2_8m": 20, "out_of_memory": 20, "compile": 40, "train_bf16": 20,
            "train_fp16": 20, "memory_train": 20},
)  # fmt: skip


# --- helpers ----------------------------------------------------------------------------


class SectionTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (checked between Python steps;
    CUDA work is asynchronous, so a section stops within one kernel launch's wait)."""

    def expire(signum, frame):
        raise SectionTimeout(f"time limit of {seconds:.0f} s reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def protein_lengths(count: int, median: int, limit: int, seed: int) -> list[int]:
    """Log-normal lengths, sigma 0.75: with median 415 the mean is ~550 residues, close to the
    human reference proteome (~20k proteins, ~11M residues, median ~415)."""
    rng = np.random.default_rng(seed)
    return [int(x) for x in np.clip(rng.lognormal(np.log(median), 0.75, count), 30, limit)]


def random_proteins(lengths: list[int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    letters = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)
    return [rng.choice(letters, size=n).tobytes().decode() for n in lengths]


def matmul_params(module: nn.Module) -> int:
    """Weights of the linear layers (embedding lookups and norms do no matrix multiplication;
    transformers' ESM carries a contact head that an embedding forward never runs)."""
    return sum(
        m.weight.numel()
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and "contact_head" not in name
    )


def shape_of(encoder: nn.Module) -> tuple[int, int]:
    """(layers, width) read from the encoder's configuration."""
    config = getattr(encoder, "config", None) or getattr(
        getattr(encoder, "esm", None), "config", None
    )
    for layers, width in (("n_layers", "d_model"), ("num_hidden_layers", "hidden_size")):
        if hasattr(config, layers):
            return getattr(config, layers), getattr(config, width)
    raise ValueError(f"cannot read layers and width of {type(encoder).__name__}")


@dataclass
class Built:
    name: str
    backbone: object
    model: LocalizationModel
    params: int  # linear-layer weights, for FLOPs
    layers: int
    width: int

    def forward_flop(self, tokens: list[int]) -> float:
        return sum(2.0 * self.params * n + 4.0 * self.layers * self.width * n * n for n in tokens)


def build(name: str, device: torch.device, seed: int = 0) -> Built:
    """A backbone with random weights, built directly on ``device``, under a fresh head."""
    backbone = get_backbone(name)
    torch.manual_seed(seed)
    with torch.device(device):
        encoder = backbone.build_encoder(pretrained=False)
        model = LocalizationModel(encoder, backbone.embedding_dim, NUM_LABELS)
    model.to(device).eval()
    layers, width = shape_of(encoder)
    return Built(name, backbone, model, matmul_params(encoder), layers, width)


def records_of(sequences: list[str]) -> list[FastaRecord]:
    return [FastaRecord(f"p{i}", "", s) for i, s in enumerate(sequences)]


def run_predict(built: Built, sequences: list[str], runtime: Runtime) -> np.ndarray:
    """synnav's prediction path: streamed chunks, length-sorted token-budget batches."""
    limit = built.backbone.max_length
    found = list(
        predict_records(
            built.model, built.backbone, records_of(sequences), runtime, max_length=limit
        )
    )
    sync(runtime.device)
    return np.stack([p.probabilities for p in found])


def predict_runtime(built: Built, device: torch.device, precision: str) -> Runtime:
    """The runtime `synnav predict` builds: the backbone's memory model on this device."""
    backbone = built.backbone
    budget = hardware.plan_budget(device, hardware.memory_model(backbone), training=False,
                                  precision=precision, min_tokens=backbone.tokens(backbone.max_length))
    return Runtime(device, precision, budget.max_tokens)


def flop_rates(flop: float, seconds: float, peaks: dict) -> dict:
    rate = flop / seconds
    out = {"tflops": round(rate / 1e12, 4)}
    for key in ("measured_bf16_tflops", "spec_bf16_tflops"):
        if peaks.get(key):
            out["mfu_vs_" + key.removesuffix("_tflops")] = round(rate / (peaks[key] * 1e12), 4)
    return out


# --- sections ---------------------------------------------------------------------------


class Check:
    def __init__(self, profile: Profile, device: torch.device, args) -> None:
        self.profile, self.device, self.args = profile, device, args
        self.cuda = device.type == "cuda"
        # On CUDA what synnav itself picks there; on CPU (smoke) bf16 too, to run the same code.
        self.precision = hardware.resolve_precision(device, "auto") if self.cuda else "bf16"
        self.peaks: dict = {}
        self._models: dict[str, Built] = {}
        lengths = protein_lengths(
            profile.pool, profile.median_length, profile.max_length, args.seed
        )
        self.pool = random_proteins(lengths, args.seed)

    def model(self, name: str) -> Built:
        if name not in self._models:
            self._models[name] = build(name, self.device)
        return self._models[name]

    def drop(self, name: str) -> None:
        self._models.pop(name, None)
        if self.cuda:
            torch.cuda.empty_cache()

    def cuda_only(self) -> None:
        if not self.cuda:
            raise SkipSection("needs CUDA")

    # roofline ---------------------------------------------------------------------------

    def roofline(self) -> dict:
        n = self.profile.mm_size
        out = {"matrix": n}
        for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
            a = torch.randn(n, n, device=self.device, dtype=dtype)
            b = torch.randn(n, n, device=self.device, dtype=dtype)
            torch.mm(a, b)
            sync(self.device)
            reps, start = 0, time.perf_counter()
            while time.perf_counter() - start < (2.0 if self.cuda else 0.3):
                for _ in range(10):
                    torch.mm(a, b)
                reps += 10
                sync(self.device)
            rate = 2.0 * n**3 * reps / (time.perf_counter() - start)
            out[f"measured_{label}_tflops"] = round(rate / 1e12, 3)
            del a, b
        out["tf32_allowed"] = bool(torch.backends.cuda.matmul.allow_tf32)
        self.peaks.update(
            measured_bf16_tflops=out["measured_bf16_tflops"],
            measured_fp32_tflops=out["measured_fp32_tflops"],
        )
        out["spec_bf16_tflops"] = self.peaks.get("spec_bf16_tflops")
        if out["spec_bf16_tflops"]:
            out["measured_over_spec"] = round(
                out["measured_bf16_tflops"] / out["spec_bf16_tflops"], 3
            )
        return out

    # attention paths --------------------------------------------------------------------

    def attention_paths(self) -> dict:
        built = self.model(self.profile.esmc)
        encoder = built.model.encoder
        if not hasattr(encoder, "attention_backend"):
            raise SkipSection(f"{built.name} has no attention paths to choose")
        proteins = self.pool[: self.profile.paths_proteins]
        batch = built.backbone.tokenize(proteins).to(self.device)
        mask = batch.residue_mask
        start_backend = encoder.attention_backend
        out: dict = {
            "proteins": len(proteins),
            "tokens": int(batch.attention_mask.sum()),
            "precision": "bf16",
            "paths": {},
        }
        half = "bf16"
        with contextlib.suppress(AttributeError):
            out["auto_resolves_to"] = encoder.resolved_attention_backend(
                self.device, torch.bfloat16
            )

        @torch.inference_mode()
        def embed(precision: str) -> tuple[torch.Tensor, torch.Tensor]:
            with hardware.autocast(self.device, precision):
                hidden = encoder(batch.input_ids, batch.attention_mask).float()
            w = mask.unsqueeze(-1).float()
            return hidden * w, (hidden * w).sum(1) / w.sum(1)

        tokens, pooled, reference = {}, {}, None
        try:
            encoder.attention_backend = "padded"
            reference = embed("fp32")
            for path in ATTENTION_PATHS:
                try:
                    encoder.attention_backend = path
                except ValueError as error:
                    out["paths"][path] = {"status": "not offered", "error": str(error)}
                    continue
                try:
                    embed(half)  # warm-up
                    sync(self.device)
                    start = time.perf_counter()
                    tokens[path], pooled[path] = embed(half)
                    sync(self.device)
                    seconds = time.perf_counter() - start
                except Exception as error:  # noqa: BLE001 - e.g. varlen without CUDA
                    status = "failed" if self.cuda else "failed (no CUDA)"
                    out["paths"][path] = {"status": status, "error": _short(error)}
                    continue
                out["paths"][path] = {
                    "status": "ok",
                    "seconds": round(seconds, 4),
                    "residues_per_s": round(float(mask.sum()) / seconds, 1),
                    "max_abs_diff_vs_fp32_token": _maxdiff(tokens[path], reference[0]),
                    "max_abs_diff_vs_fp32_pooled": _maxdiff(pooled[path], reference[1]),
                }
        finally:
            encoder.attention_backend = start_backend
        names = list(tokens)
        pairs = {
            f"{a}~{b}": {
                "token": _maxdiff(tokens[a], tokens[b]),
                "pooled": _maxdiff(pooled[a], pooled[b]),
            }
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        }
        out["pairwise_bf16"] = pairs
        rounding = max(
            (p["max_abs_diff_vs_fp32_pooled"] for p in out["paths"].values() if "seconds" in p),
            default=0.0,
        )
        out["bf16_rounding_pooled"] = rounding
        out["embedding_scale_max_abs"] = float(reference[0].abs().max())
        # Equal means: two paths differ by no more than bf16 itself moves a path away from fp32.
        out["paths_equal_within_bf16_rounding"] = all(
            p["pooled"] <= rounding for p in pairs.values()
        )
        if self.cuda and "varlen" not in tokens:
            out["warning"] = "varlen did not run on CUDA"
        return out

    # memory model -----------------------------------------------------------------------

    def _memory_model(self, built: Built):
        return hardware.memory_model(built.backbone, built.model.encoder)

    def memory_predict(self) -> dict:
        built = self.model(self.profile.esmc)
        memory = self._memory_model(built)
        per_token = memory.bytes_per_token(training=False, frozen=False, precision=self.precision)
        out: dict = {
            "precision": self.precision,
            "model": asdict(memory),
            "predicted_fixed_bytes": memory.fixed_bytes(
                training=False, frozen=False, precision=self.precision
            ),
            "predicted_bytes_per_token": per_token,
            "points": [],
        }
        if self.cuda:
            free, total = torch.cuda.mem_get_info(self.device)
            out["budget_tokens"] = hardware.plan_budget(
                self.device,
                memory,
                training=False,
                precision=self.precision,
                min_tokens=built.backbone.max_length + 2,
            ).max_tokens
            out["gpu_total_bytes"], out["gpu_free_bytes"] = total, free
        runtime = Runtime(self.device, self.precision, 1 << 30)
        for tokens in self.profile.memory_tokens:
            n = 510
            sequences = random_proteins([n] * max(1, tokens // (n + 2)), self.args.seed + tokens)
            point = {"tokens": len(sequences) * (n + 2)}
            if self.cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
                base = torch.cuda.memory_allocated(self.device)
            run_predict(built, sequences, runtime)
            if self.cuda:
                peak = torch.cuda.max_memory_allocated(self.device) - base
                point["measured_peak_above_weights_bytes"] = peak
                # Above the fp32 weights: autocast's half-precision copies, then the tokens.
                point["predicted_bytes"] = (
                    out["predicted_fixed_bytes"] - 4 * memory.params + point["tokens"] * per_token
                )
                point["measured_over_predicted"] = round(peak / point["predicted_bytes"], 3)
            out["points"].append(point)
        if self.cuda:
            (t0, m0), (t1, m1) = [
                (p["tokens"], p["measured_peak_above_weights_bytes"]) for p in out["points"]
            ]
            out["measured_bytes_per_token"] = round((m1 - m0) / (t1 - t0), 1)
            out["measured_over_predicted_per_token"] = round(
                out["measured_bytes_per_token"] / per_token, 3
            )
            out["weights_bytes"] = base
        else:
            out["note"] = (
                "CUDA memory statistics unavailable: the batches ran, nothing was measured"
            )
        return out

    # prediction throughput --------------------------------------------------------------

    def _throughput(self, name: str) -> dict:
        built = self.model(name)
        runtime = predict_runtime(built, self.device, self.precision)
        limit = built.backbone.max_length
        out = {
            "backbone": name,
            "precision": self.precision,
            "budget_tokens": runtime.max_tokens,
            "attention": _attention_of(built, self.device, self.precision),
        }
        pilot = self.pool[: self.profile.pilot]
        start = time.perf_counter()
        run_predict(built, pilot, runtime)  # warm-up: kernels, allocator, cuBLAS heuristics
        out["warmup_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        run_predict(built, pilot, runtime)
        pilot_rate = sum(min(len(s), limit) for s in pilot) / (time.perf_counter() - start)
        mean = float(np.mean([min(len(s), limit) for s in self.pool]))
        count = int(min(len(self.pool), max(len(pilot), pilot_rate * self.profile.window_s / mean)))
        sequences = self.pool[:count]
        start = time.perf_counter()
        run_predict(built, sequences, runtime)
        seconds = time.perf_counter() - start
        residues = sum(min(len(s), limit) for s in sequences)
        rate = residues / seconds
        tokens = [min(len(s), limit) + 2 for s in sequences]
        out.update(
            proteins=count,
            residues=residues,
            seconds=round(seconds, 3),
            residues_per_s=round(rate, 1),
            final_budget_tokens=runtime.max_tokens,
            median_length=int(np.median([len(s) for s in sequences])),
            longest=max(len(s) for s in sequences),
            projected_11M_residues_s=round(PROTEOME_RESIDUES / rate, 1),
            target_s=PROTEOME_TARGET_S,
            **flop_rates(built.forward_flop(tokens), seconds, self.peaks),
        )
        return out

    def predict_esmc600m(self) -> dict:
        return self._throughput(self.profile.esmc)

    def predict_esm2_8m(self) -> dict:
        try:
            return self._throughput(self.profile.esm2)
        finally:
            self.drop(self.profile.esm2)

    # out of memory ----------------------------------------------------------------------

    def out_of_memory(self) -> dict:
        built = self.model(self.profile.esmc)
        sequences = self.pool[: self.profile.oom_proteins]
        reference_runtime = predict_runtime(built, self.device, self.precision)
        reference = run_predict(built, sequences, reference_runtime)
        far_too_high = 1 << 30
        runtime = Runtime(self.device, self.precision, far_too_high)
        out: dict = {
            "proteins": len(sequences),
            "tokens": sum(len(s) + 2 for s in sequences),
            "initial_budget_tokens": far_too_high,
        }
        start = time.perf_counter()
        if self.cuda:
            # Cap the allocator so that the first batch (all of these proteins) cannot fit.
            total = torch.cuda.get_device_properties(self.device).total_memory
            allowed = torch.cuda.memory_allocated(self.device) + self.profile.oom_pool_gib * 2**30
            fraction = min(0.95, allowed / total)
            out["memory_cap_bytes"] = int(fraction * total)
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(fraction, self.device)
            try:
                found = run_predict(built, sequences, runtime)
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0, self.device)
                torch.cuda.empty_cache()
            out["how"] = "torch.cuda.set_per_process_memory_fraction"
        else:
            with _inject_oom(
                built.model.encoder, above_tokens=4 * max(len(s) + 2 for s in sequences)
            ) as hits:
                found = run_predict(built, sequences, runtime)
            out["how"] = "injected torch.OutOfMemoryError above a token count (no CUDA)"
            out["injected_errors"] = hits[0]
        out.update(
            seconds=round(time.perf_counter() - start, 2),
            final_budget_tokens=runtime.max_tokens,
            recovered=runtime.max_tokens < far_too_high,
            max_abs_prob_diff_vs_normal_budget=float(np.abs(found - reference).max()),
        )
        if not out["recovered"]:
            raise AssertionError(f"no out-of-memory happened or none was recovered from: {out}")
        return out

    # torch.compile ----------------------------------------------------------------------

    def compile(self) -> dict:
        eager = self.model(self.profile.esmc)
        sequences = self.pool[: self.profile.compile_proteins]
        runtime = predict_runtime(eager, self.device, self.precision)
        run_predict(eager, sequences[:8], runtime)
        out: dict = {
            "proteins": len(sequences),
            "backend": self.profile.compile_backend,
            "what": "each transformer block compiled (dynamic=True); the rest eager",
        }
        compiled = build(self.profile.esmc, self.device)
        compiled.model.load_state_dict(eager.model.state_dict())
        blocks = _repeated_blocks(compiled.model.encoder)
        for block in blocks:
            block.compile(dynamic=True, backend=self.profile.compile_backend)
        out["blocks"] = len(blocks)
        try:
            start = time.perf_counter()
            run_predict(compiled, sequences, runtime)
            out["compiled_first_pass_s"] = round(time.perf_counter() - start, 2)
            times = {}
            for label, built in (("eager", eager), ("compiled", compiled)):
                start = time.perf_counter()
                probs = run_predict(built, sequences, runtime)
                times[label] = time.perf_counter() - start
                out[f"{label}_s"] = round(times[label], 3)
                out[label + "_probs"] = probs
            out["speedup"] = round(times["eager"] / times["compiled"], 3)
            out["max_abs_prob_diff"] = float(
                np.abs(out.pop("eager_probs") - out.pop("compiled_probs")).max()
            )
        finally:
            del compiled
            torch.compiler.reset()
            if self.cuda:
                torch.cuda.empty_cache()
        return out

    # training ---------------------------------------------------------------------------

    def _train(self, precision: str) -> dict:
        built = self.model(self.profile.esmc)
        model = built.model
        limit = min(ORIGIN_MAX_LENGTH, built.backbone.max_length)
        sequences = [s[:limit] for s in self.pool]
        lengths = [len(s) + 2 for s in sequences]
        memory = self._memory_model(built)
        budget = hardware.plan_budget(
            self.device, memory, training=True, precision=precision, min_tokens=limit + 2
        )
        rng = np.random.default_rng(self.args.seed)
        plan = training_batches(lengths, budget.max_tokens, ORIGIN_BATCH, rng)
        steps = min(len(plan), self.profile.train_steps + 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=ORIGIN_LR)
        scaler = hardware.grad_scaler(self.device, precision)
        targets = torch.randint(0, 2, (len(sequences), NUM_LABELS), device=self.device).float()
        pos_weight = torch.ones(NUM_LABELS, device=self.device)
        recomputed = 0

        def step(index: list[int]) -> None:
            nonlocal recomputed
            tokens = max(lengths[i] for i in index) * len(index)
            recompute = budget.recompute(tokens)
            recomputed += recompute
            built.backbone.set_gradient_checkpointing(model.encoder, recompute)
            batch = built.backbone.tokenize([sequences[i] for i in index]).to(self.device)
            with hardware.autocast(self.device, precision):
                logits = model(batch)
            loss = masked_bce(logits, targets[index], pos_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(optimizer)
            scaler.update()

        out: dict = {
            "backbone": built.name,
            "precision": precision,
            "batch_size": ORIGIN_BATCH,
            "lr": ORIGIN_LR,
            "budget_tokens": budget.max_tokens,
            "budget_source": budget.source,
            "attention": _attention_of(built, self.device, precision),
        }
        model.train()
        try:
            start = time.perf_counter()
            for index in plan[:2]:
                step(index)
            sync(self.device)
            out["warmup_s"] = round(time.perf_counter() - start, 2)
            recomputed, timed = 0, plan[2:steps]
            start = time.perf_counter()
            for index in timed:
                step(index)
            sync(self.device)
            seconds = time.perf_counter() - start
        finally:
            model.eval()
            built.backbone.set_gradient_checkpointing(model.encoder, False)
            optimizer.zero_grad(set_to_none=True)
            optimizer.state.clear()  # the AdamW moments: 8 B a parameter
            if self.cuda:
                torch.cuda.empty_cache()
        index = [i for b in timed for i in b]
        residues = sum(lengths[i] - 2 for i in index)
        rate = residues / seconds
        mean = float(np.mean([len(s) for s in sequences]))
        epochs_residues = TRAIN_EPOCHS * TRAIN_PROTEINS * mean
        out.update(
            steps=len(timed),
            proteins=len(index),
            residues=residues,
            seconds=round(seconds, 3),
            recomputed_steps=recomputed,
            residues_per_s=round(rate, 1),
            proteins_per_s=round(len(index) / seconds, 2),
            mean_length=round(mean, 1),
            projected_30_epochs_s=round(epochs_residues / rate, 1),
            target_s=TRAIN_TARGET_S,
            **flop_rates(3 * built.forward_flop([lengths[i] for i in index]), seconds, self.peaks),
        )
        return out

    def train_bf16(self) -> dict:
        if self.cuda and not hardware.cuda_has_native_bf16():
            raise SkipSection("this GPU has no bf16")
        return self._train("bf16")

    def train_fp16(self) -> dict:
        return self._train("fp16")

    def memory_train(self) -> dict:
        built = self.model(self.profile.esmc)
        model, memory, precision = built.model, self._memory_model(built), self.precision
        out: dict = {
            "precision": precision,
            "points": [],
            "predicted_fixed_bytes": memory.fixed_bytes(
                training=True, frozen=False, precision=precision
            ),
        }
        optimizer = torch.optim.AdamW(model.parameters(), lr=ORIGIN_LR)
        scaler = hardware.grad_scaler(self.device, precision)
        model.train()
        try:
            for tokens in self.profile.train_memory_tokens:
                for checkpointing in (False, True):
                    n = 510
                    count = max(1, tokens // (n + 2))
                    batch = built.backbone.tokenize(random_proteins([n] * count, tokens)).to(
                        self.device
                    )
                    targets = torch.zeros(count, NUM_LABELS, device=self.device)
                    built.backbone.set_gradient_checkpointing(model.encoder, checkpointing)
                    if self.cuda:
                        torch.cuda.empty_cache()
                        torch.cuda.reset_peak_memory_stats(self.device)
                    with hardware.autocast(self.device, precision):
                        logits = model(batch)
                    loss = masked_bce(logits, targets, torch.ones(NUM_LABELS, device=self.device))
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=False)  # gradients stay, as in a run
                    point = {
                        "tokens": count * (n + 2),
                        "gradient_checkpointing": checkpointing,
                        "predicted_bytes": memory.fixed_bytes(
                            training=True, frozen=False, precision=precision
                        )
                        + count
                        * (n + 2)
                        * memory.bytes_per_token(
                            training=True,
                            frozen=False,
                            precision=precision,
                            checkpointing=checkpointing,
                        ),
                    }
                    if self.cuda:
                        sync(self.device)
                        point["measured_peak_bytes"] = torch.cuda.max_memory_allocated(self.device)
                        point["measured_over_predicted"] = round(
                            point["measured_peak_bytes"] / point["predicted_bytes"], 3
                        )
                    out["points"].append(point)
        finally:
            model.eval()
            built.backbone.set_gradient_checkpointing(model.encoder, False)
            optimizer.zero_grad(set_to_none=True)
            del optimizer
            if self.cuda:
                torch.cuda.empty_cache()
        if not self.cuda:
            out["note"] = "CUDA memory statistics unavailable: the steps ran, nothing was measured"
        return out


class SkipSection(Exception):
    pass


# In order of importance: when the overall budget runs out, the last ones are skipped.
SECTIONS = (
    "roofline",
    "attention_paths",
    "predict_esmc600m",
    "predict_esm2_8m",
    "train_bf16",
    "train_fp16",
    "memory_predict",
    "memory_train",
    "out_of_memory",
    "compile",
)


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) < 600 else text[:600] + " ..."


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _attention_of(built: Built, device: torch.device, precision: str) -> str | None:
    encoder = built.model.encoder
    if not hasattr(encoder, "resolved_attention_backend"):
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    return encoder.resolved_attention_backend(device, dtype)


def _repeated_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The transformer blocks: the children of the encoder's longest ModuleList."""
    lists = [m for m in encoder.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        return [encoder]
    return list(max(lists, key=len))


@contextlib.contextmanager
def _inject_oom(encoder: nn.Module, above_tokens: int):
    """Make ``encoder`` raise torch.OutOfMemoryError on batches of more than ``above_tokens``
    padded tokens, as a GPU would; yields a one-element list counting the errors raised."""
    hits = [0]

    def hook(module, args):
        input_ids = args[0]
        if input_ids.numel() > above_tokens:
            hits[0] += 1
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: {input_ids.numel()} tokens)"
            )

    handle = encoder.register_forward_pre_hook(hook)
    try:
        yield hits
    finally:
        handle.remove()


# --- run --------------------------------------------------------------------------------


def environment(device: torch.device, peak_override: float | None) -> dict:
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "argv": sys.argv,
    }  # fmt: skip
    with contextlib.suppress(Exception):
        env["git_commit"] = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
                cwd=Path(__file__).parent,
            ).stdout.strip()
            or None
        )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_bytes=props.total_memory,
            capability=f"{props.major}.{props.minor}",
            cudnn=torch.backends.cudnn.version(),
        )
        spec = peak_override or next((p for key, p in SPEC_BF16_TFLOPS if key in props.name), None)
        env["spec_bf16_tflops"] = spec
    elif peak_override:
        env["spec_bf16_tflops"] = peak_override
    with contextlib.suppress(ImportError):
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401

        env["torch_has_varlen_attn"] = True
    env.setdefault("torch_has_varlen_attn", False)
    return env


def run(args) -> dict:
    profile = SMOKE if args.smoke else GPU
    if args.smoke:
        # The built-in backbones build tiny models of the same architectures (tests use this too).
        os.environ["SYNNAV_TEST_TINY_BACKBONES"] = "1"
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --smoke for the CPU check")
    torch.manual_seed(args.seed)
    env = environment(device, args.peak_tflops)
    results: dict = {"kind": "smoke" if args.smoke else "full", "environment": env, "sections": {}}
    check = Check(profile, device, args)
    check.peaks["spec_bf16_tflops"] = env.get("spec_bf16_tflops")
    wanted = [s for s in SECTIONS if not args.only or s in args.only.split(",")]
    deadline = time.monotonic() + args.budget_s
    print(
        f"gpu_check ({results['kind']}): {env.get('gpu', device)}, torch {env['torch']}, "
        f"precision {check.precision}, sections {', '.join(wanted)}",
        file=sys.stderr,
        flush=True,
    )
    for name in wanted:
        limit = profile.limits[name] * args.limit_scale
        left = deadline - time.monotonic()
        record: dict = {"limit_s": limit}
        start = time.perf_counter()
        if left < min(limit, 10):
            record.update(status="skipped", error=f"overall budget of {args.budget_s:.0f} s spent")
        else:
            try:
                with time_limit(min(limit, left)):
                    record.update(getattr(check, name)())
                record["status"] = "ok"
            except SkipSection as why:
                record.update(status="skipped", error=str(why))
            except SectionTimeout as error:
                record.update(status="timeout", error=str(error))
            except Exception as error:  # noqa: BLE001 - recorded; the next section still runs
                record.update(
                    status="failed",
                    error=_short(error),
                    traceback=traceback.format_exc(limit=6)[-3000:],
                )
                if check.cuda:
                    with contextlib.suppress(Exception):
                        torch.cuda.set_per_process_memory_fraction(1.0, device)
                        torch.cuda.empty_cache()
        record["seconds_total"] = round(time.perf_counter() - start, 2)
        results["sections"][name] = record
        print(
            f"  {name:18s} {record['status']:8s} {record['seconds_total']:7.1f} s"
            f"{'  ' + record['error'][:160] if record.get('error') else ''}",
            file=sys.stderr,
            flush=True,
        )
        if args.out:  # written after every section: a crash later keeps what was measured
            _write(args.out, results)
    results["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def _write(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(results, indent=1, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# --- summary ----------------------------------------------------------------------------


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(results: dict) -> str:
    """The summary table of a results file, for docs/benchmarks.md."""
    env, sections = results["environment"], results["sections"]
    tiny = " (tiny)" if results.get("kind") == "smoke" else ""
    rows = []

    def row(check: str, result: str, section: str) -> None:
        rows.append(f"| {check} | {result} | {sections.get(section, {}).get('status', '-')} |")

    roof = sections.get("roofline", {})
    bf16, fp32 = roof.get("measured_bf16_tflops"), roof.get("measured_fp32_tflops")
    row(
        f"`torch.mm` bf16 / fp32 ({roof.get('matrix', '-')}^2)",
        f"{_fmt(bf16, '.3g')} / {_fmt(fp32, '.3g')} TFLOP/s "
        f"(data sheet bf16: {_fmt(env.get('spec_bf16_tflops'))})",
        "roofline",
    )
    paths = sections.get("attention_paths", {})
    ran = [p for p, v in paths.get("paths", {}).items() if v.get("status") == "ok"]
    worst = max((v["pooled"] for v in paths.get("pairwise_bf16", {}).values()), default=None)
    speed = ", ".join(
        f"{p} {_fmt(v.get('residues_per_s'), ',.0f')}"
        for p, v in paths.get("paths", {}).items()
        if v.get("status") == "ok"
    )
    row(
        f"attention paths agree in bf16 ({', '.join(ran) or '-'})",
        f"{paths.get('paths_equal_within_bf16_rounding', '-')}: largest pooled difference "
        f"{_fmt(worst, '.1e')}, bf16 vs fp32 {_fmt(paths.get('bf16_rounding_pooled'), '.1e')}; "
        f"residues/s: {speed or '-'}",
        "attention_paths",
    )
    for key in ("predict_esmc600m", "predict_esm2_8m"):
        r = sections.get(key, {})
        row(
            f"{r.get('backbone', key[8:])}{tiny} prediction, {r.get('precision', '-')}",
            f"{_fmt(r.get('residues_per_s'), ',.0f')} residues/s; 11M residues in "
            f"{_fmt(r.get('projected_11M_residues_s'), '.0f')} s (target {PROTEOME_TARGET_S:.0f}); "
            f"MFU {_pct(r.get('mfu_vs_measured_bf16'))} of the measured mm peak, "
            f"{_pct(r.get('mfu_vs_spec_bf16'))} of the data sheet",
            key,
        )
    for key in ("train_bf16", "train_fp16"):
        r = sections.get(key, {})
        seconds = r.get("projected_30_epochs_s")
        row(
            f"{r.get('backbone', 'esmc600m')}{tiny} fine-tuning, {key[-4:]}, batches of 8",
            f"{_fmt(r.get('proteins_per_s'), '.1f')} proteins/s; 30 epochs x 4,600 in "
            f"{_fmt(seconds and seconds / 60, '.1f')} min (target 12); MFU "
            f"{_pct(r.get('mfu_vs_measured_bf16'))} / {_pct(r.get('mfu_vs_spec_bf16'))}",
            key,
        )
    mem = sections.get("memory_predict", {})
    row(
        "memory model, inference: measured / predicted bytes a token",
        _fmt(mem.get("measured_over_predicted_per_token")),
        "memory_predict",
    )
    points = sections.get("memory_train", {}).get("points", [])
    ratios = ", ".join(
        f"{p['tokens']} tokens{' recomputed' if p['gradient_checkpointing'] else ''}: "
        f"{p['measured_over_predicted']}"
        for p in points
        if "measured_over_predicted" in p
    )
    row("memory model, training: measured / predicted peak", ratios or "-", "memory_train")
    oom = sections.get("out_of_memory", {})
    row(
        "forced out-of-memory",
        f"recovered {oom.get('recovered', '-')}; budget "
        f"{_fmt(oom.get('initial_budget_tokens'), ',')} -> "
        f"{_fmt(oom.get('final_budget_tokens'), ',')} tokens; largest probability change "
        f"{_fmt(oom.get('max_abs_prob_diff_vs_normal_budget'), '.1e')}",
        "out_of_memory",
    )
    comp = sections.get("compile", {})
    row(
        f"`torch.compile` of each block ({comp.get('backend', '-')})",
        f"x{_fmt(comp.get('speedup'))} steady state; first pass "
        f"{_fmt(comp.get('compiled_first_pass_s'))} s",
        "compile",
    )
    head = (
        f"{results.get('kind', 'full')} run, {env['date']}: {env.get('gpu', env['device'])}, "
        f"torch {env['torch']} (CUDA {env.get('cuda') or '-'}), {env['cpu_count']} CPUs, "
        f"load average {env['load_average'][0]}"
    )
    failed = [
        f"- `{name}`: {record['status']}: {record.get('error', '')}"
        for name, record in sections.items()
        if record.get("status") != "ok"
    ]
    lines = [head, "", "| check | result | status |", "|---|---|---|", *rows]
    if failed:
        lines += ["", "Sections that did not complete:", *failed]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, help="write the results (JSON) here, after every section"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny models on CPU: the same code, in seconds"
    )
    parser.add_argument("--device", help="cuda, cuda:N or cpu (default: cuda; cpu with --smoke)")
    parser.add_argument("--only", help="comma-separated sections to run: " + ", ".join(SECTIONS))
    parser.add_argument(
        "--budget-s",
        type=float,
        default=330.0,
        help="seconds; no section starts or runs past this (imports and CUDA start-up are extra)",
    )
    parser.add_argument(
        "--limit-scale", type=float, default=1.0, help="multiply every section's time limit"
    )
    parser.add_argument(
        "--peak-tflops", type=float, help="data-sheet bf16 peak (default: from the GPU's name)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="RESULTS",
        help="print the summary table of an existing results file and exit",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    results = run(args)
    if args.out:
        _write(args.out, results)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
