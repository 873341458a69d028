"""Prediction and training throughput (residues/s) of synnav, side by side with the origin's ways.

Variants, timed interleaved in one run (each runs its whole plan in rounds, and in every round
each variant, in a rotating order, advances by the same share of the tokens) so that a shared,
busy machine slows them all alike and their ratios stay fair:

``synnav``     length-sorted batches bounded by a token budget (``batching``); ESM C uses the
               packed attention path synnav picks for the device (``attention_backend="auto"``)
``origin``     one protein per forward, the official-style ESM C forward (masked SDPA, every
               layer's hidden state kept and stacked, as the reference model returns them)
``padded8``    8 proteins per batch in input order, padded to the longest of the 8 (masked SDPA)
``synnav[B]``  synnav's batches with ESM C attention path B (``--esmc-backends``)
``compiled``   synnav's batches through ``torch.compile(encoder, dynamic=True)`` (``--compile``)

Training compares ``synnav`` (token-budget batches of at most ``--batch-size`` similar lengths,
packed attention) with ``padded8`` (the origin's batches of 8 in input order, padded).

Weights are random: speed does not depend on their values, so no download is needed. Every
variant's pooled embeddings are checked against the one-at-a-time ones (batching and padding
must not change a protein's result).

Models (``--models``, comma-separated):

``esm2-8m``      transformers ``EsmModel`` shaped like ``facebook/esm2_t6_8M_UR50D`` (SDPA attention)
``esmc-small``   synnav's ESM C encoder at the same scale (6 layers, width 320, 20 heads)
``esmc-600m``    ESM C 600M (GPU runs; on CPU it is ~70x the work of the small models)
``esm2-650m``    ESM2 650M (GPU runs)

FLOP model (per protein of ``n`` tokens, special tokens included, ``P`` = parameters of the
encoder's matrix multiplications, embeddings and norms excluded, ``L`` layers of width ``d``)::

    forward  = 2 * P * n            every token passes through every weight matrix (multiply + add)
             + 4 * L * d * n^2      attention scores Q K^T (2 n^2 d per layer) and the weighted sum
                                    of values A V (another 2 n^2 d)
    training = 3 * forward          the backward pass costs twice the forward

For ESM C 600M this is 1.15 GFLOP per token plus 0.166 MFLOP x n per token of attention, the
figures in docs/DESIGN.md. Only real tokens count: work spent on padding is waste, so it lowers
the model FLOP utilisation (MFU = useful FLOP/s / the device's dense peak) reported on GPUs; on
CPU the useful GFLOP/s are reported.

Run ``python benchmarks/throughput.py --help`` for the options; docs/benchmarks.md has results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synnav_cli.backbones.base import TokenBatch
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.model import LocalizationModel, masked_bce
from synnav_cli.runtime import hardware
from synnav_cli.scoring import batches as batching

NUM_LABELS = 10
# Dense bf16 tensor-core peaks from the vendor data sheets, TFLOP/s, matched against
# torch.cuda.get_device_name(); --peak-tflops overrides. Checked most specific first.
GPU_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
# The targets of the "fast as the hardware allows" issue, on an H100 with ESM C 600M.
PROTEOME_RESIDUES = 11_000_000
PROTEOME_TARGET_S = 45.0
TRAIN_RESIDUES = 30 * 4600 * 550
TRAIN_TARGET_S = 15 * 60.0


# --- models -----------------------------------------------------------------------------


@dataclass
class Bench:
    name: str
    model: LocalizationModel
    max_residues: int  # the backbone's own limit; longer proteins are cut, as synnav does
    matmul_params: int
    layers: int
    width: int
    encoder: nn.Module

    def forward_flop(self, tokens: int) -> float:
        return 2.0 * self.matmul_params * tokens + 4.0 * self.layers * self.width * tokens**2


def _matmul_params(encoder: nn.Module) -> int:
    # Linear layers only: embedding tables are lookups and norms are elementwise. transformers'
    # EsmModel carries a contact head that an embedding forward never runs.
    return sum(
        m.weight.numel()
        for name, m in encoder.named_modules()
        if isinstance(m, nn.Linear) and "contact_head" not in name
    )


class _ESM2Encoder(nn.Module):
    def __init__(self, esm: nn.Module) -> None:
        super().__init__()
        self.esm = esm

    def forward(self, input_ids, attention_mask):
        return self.esm(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _esm2(hidden: int, layers: int, heads: int, intermediate: int) -> tuple[nn.Module, int, int]:
    from transformers import EsmConfig, EsmModel

    config = EsmConfig(
        vocab_size=33, mask_token_id=32, pad_token_id=1, hidden_size=hidden,
        num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=intermediate,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=1026,
        layer_norm_eps=1e-5, position_embedding_type="rotary", token_dropout=True,
        emb_layer_norm_before=False, attn_implementation="sdpa",
    )  # fmt: skip
    return _ESM2Encoder(EsmModel(config, add_pooling_layer=False)), layers, hidden


def _esmc(d_model: int, heads: int, layers: int, backend: str) -> tuple[nn.Module, int, int]:
    from synnav_cli.backbones.esmc_model import ESMCConfig, ESMCEncoder

    encoder = ESMCEncoder(ESMCConfig(d_model=d_model, n_heads=heads, n_layers=layers),
                          attention_backend=backend)
    return encoder, layers, d_model


MODELS: dict[str, Callable[[str], tuple[nn.Module, int, int, int]]] = {
    # name -> builder(backend) -> (encoder, layers, width, residue limit)
    "esm2-8m": lambda backend: (*_esm2(320, 6, 20, 1280), 1022),
    "esm2-650m": lambda backend: (*_esm2(1280, 33, 20, 5120), 1022),
    "esmc-small": lambda backend: (*_esmc(320, 20, 6, backend), 2048),
    "esmc-600m": lambda backend: (*_esmc(1152, 18, 36, backend), 2048),
}


def build(name: str, device: torch.device, backend: str = "auto") -> Bench:
    torch.manual_seed(0)
    encoder, layers, width, limit = MODELS[name](backend)
    model = LocalizationModel(encoder, width, NUM_LABELS).to(device)
    return Bench(name, model, limit, _matmul_params(encoder), layers, width, encoder)


# --- data -------------------------------------------------------------------------------


def protein_lengths(count: int, seed: int, dataset: Path | None) -> list[int]:
    """Lengths from a dataset file, else log-normal with median 480 clipped to 50..1800."""
    rng = np.random.default_rng(seed)
    if dataset is not None:
        from synnav_cli.data.dataset import read_dataset

        pool = np.array([len(s) for s in read_dataset(dataset).sequences])
        return [int(x) for x in rng.choice(pool, size=count, replace=len(pool) < count)]
    # sigma 0.6 gives a long tail like UniProt's (about 1 protein in 20 over 1300 residues).
    lengths = rng.lognormal(mean=np.log(480), sigma=0.6, size=count)
    return [int(x) for x in np.clip(lengths, 50, 1800)]


def random_proteins(lengths: list[int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    alphabet = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return ["".join(rng.choice(alphabet, size=n)) for n in lengths]


# --- variants ---------------------------------------------------------------------------


@dataclass
class Variant:
    name: str
    plan: Callable[[list[int]], list[list[int]]]  # token counts -> batches of positions
    backend: str = "auto"  # ESM C attention path
    stack_hidden: bool = False  # keep and stack every layer's output, as the reference ESM C does
    compiled: bool = False


def _sorted(budget: int) -> Callable[[list[int]], list[list[int]]]:
    return lambda tokens: batching.inference_batches(tokens, budget)


def _single(tokens: list[int]) -> list[list[int]]:
    return [[i] for i in range(len(tokens))]


def _fixed(size: int) -> Callable[[list[int]], list[list[int]]]:
    return lambda tokens: [list(range(i, min(i + size, len(tokens)))) for i in range(0, len(tokens), size)]


def predict_variants(esmc: bool, budget: int, backends: list[str], compile_: bool) -> list[Variant]:
    variants = [
        Variant("synnav", _sorted(budget)),
        Variant("origin", _single, backend="padded", stack_hidden=esmc),
        Variant("padded8", _fixed(8), backend="padded"),
    ]
    if esmc:
        variants += [Variant(f"synnav[{b}]", _sorted(budget), backend=b) for b in backends]
    if compile_:
        variants.append(Variant("compiled", _sorted(budget), compiled=True))
    return variants


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Stacker:
    """Keeps every block's output and stacks them after the forward, like the reference ESM C
    (which returns all hidden states): the memory and copies the origin paid per protein."""

    def __init__(self, encoder: nn.Module) -> None:
        blocks = getattr(getattr(encoder, "transformer", None), "blocks", [])
        self.outputs: list[torch.Tensor] = []
        self.hooks = [b.register_forward_hook(lambda m, i, o: self.outputs.append(o)) for b in blocks]

    def finish(self) -> None:
        if self.outputs:
            torch.stack(self.outputs)
        self.outputs.clear()

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


def _configure(bench: Bench, variant: Variant, compiled: dict) -> LocalizationModel:
    """The model a variant runs: attention path set, encoder compiled when asked."""
    if hasattr(bench.encoder, "attention_backend"):
        bench.encoder.attention_backend = variant.backend
    if not variant.compiled:
        bench.model.encoder = bench.encoder
        return bench.model
    if "encoder" not in compiled:
        compiled["encoder"] = torch.compile(bench.encoder, dynamic=True)
    bench.model.encoder = compiled["encoder"]
    return bench.model


@torch.inference_mode()
def embed(bench, variant, sequences, index_batches, out, device, precision, compiled) -> None:
    model = _configure(bench, variant, compiled)
    model.eval()
    stacker = _Stacker(bench.encoder) if variant.stack_hidden else None
    try:
        for index in index_batches:
            batch = ESM_VOCABULARY.batch([sequences[i] for i in index]).to(device)
            with hardware.autocast(device, precision):
                pooled = model.embed(batch)
                model.head(pooled)  # a prediction runs the head too
            if stacker is not None:
                stacker.finish()
            out[index] = pooled.float().cpu().numpy()
    finally:
        if stacker is not None:
            stacker.remove()


def interleaved(variants: list[Variant], plans: dict[str, list[list[int]]], tokens: list[int], run,
                rounds: int) -> dict[str, float]:
    """Seconds per variant. Every variant's whole plan runs, but in ``rounds`` slices: in round
    ``r`` each variant (in an order that rotates) advances to ``r / rounds`` of its tokens, so a
    load that comes and goes on a shared machine falls on all variants alike."""
    seconds = dict.fromkeys((v.name for v in variants), 0.0)
    done = dict.fromkeys(seconds, 0)
    position = dict.fromkeys(seconds, 0)
    total = sum(tokens)
    for r in range(1, rounds + 1):
        for k in range(len(variants)):
            variant = variants[(r + k) % len(variants)]
            plan = plans[variant.name]
            todo = []
            while position[variant.name] < len(plan) and done[variant.name] < total * r / rounds:
                index = plan[position[variant.name]]
                todo.append(index)
                done[variant.name] += sum(tokens[i] for i in index)
                position[variant.name] += 1
            if todo:
                start = time.perf_counter()
                run(variant, todo)
                seconds[variant.name] += time.perf_counter() - start
    return seconds


def bench_predict(bench, sequences, variants, device, precision, rounds) -> list[dict]:
    tokens = [len(s) + 2 for s in sequences]
    out = {v.name: np.zeros((len(sequences), bench.width), dtype=np.float32) for v in variants}
    compiled: dict = {}
    plans = {v.name: v.plan(tokens) for v in variants}

    def run(variant, batches):
        embed(bench, variant, sequences, batches, out[variant.name], device, precision, compiled)
        _sync(device)

    warmup = {}
    for variant in variants:  # allocator, kernels, thread pools; compilation for "compiled"
        start = time.perf_counter()
        run(variant, plans[variant.name][:1])
        warmup[variant.name] = round(time.perf_counter() - start, 1)
    seconds = interleaved(variants, plans, tokens, run, rounds)
    residues = sum(len(s) for s in sequences)
    useful = sum(bench.forward_flop(n) for n in tokens)
    reference = out["origin"]
    rows = []
    for v in variants:
        padded = sum(batching.padded_cost([tokens[i] for i in b]) for b in plans[v.name])
        rows.append(dict(
            model=bench.name, variant=v.name, seconds=round(seconds[v.name], 3),
            residues_per_s=round(residues / seconds[v.name], 1), batches=len(plans[v.name]),
            padding=round(padded / sum(tokens) - 1, 4),
            vs_origin=round(seconds["origin"] / seconds[v.name], 2),
            vs_padded8=round(seconds["padded8"] / seconds[v.name], 2),
            max_abs_diff_vs_single=float(np.abs(out[v.name] - reference).max()),
            gflops=round(useful / seconds[v.name] / 1e9, 2),
            projected_proteome_s=round(PROTEOME_RESIDUES * seconds[v.name] / residues, 1),
            warmup_s=warmup[v.name],
        ))
    bench.model.encoder = bench.encoder
    return rows


def bench_train(bench, sequences, budget, batch_size, device, precision, rounds) -> list[dict]:
    """Forward + backward + AdamW step, synnav's batches against the origin's padded 8."""
    model = bench.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = hardware.grad_scaler(device, precision)
    tokens = [len(s) + 2 for s in sequences]
    targets = torch.randint(0, 2, (len(sequences), NUM_LABELS), dtype=torch.float32)
    pos_weight = torch.ones(NUM_LABELS, device=device)
    rng = np.random.default_rng(0)
    variants = [
        Variant("synnav", lambda t: batching.training_batches(t, budget, batch_size, rng)),
        Variant("padded8", _fixed(8), backend="padded"),
    ]
    steps = dict.fromkeys((v.name for v in variants), 0)

    def step(index):
        batch: TokenBatch = ESM_VOCABULARY.batch([sequences[i] for i in index]).to(device)
        with hardware.autocast(device, precision):
            logits = model(batch)
        loss = masked_bce(logits, targets[index].to(device), pos_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def run(variant, batches):
        _configure(bench, variant, {})
        model.train()
        for index in batches:
            step(index)
            steps[variant.name] += 1
        _sync(device)

    plans = {v.name: v.plan(tokens) for v in variants}
    for variant in variants:
        _configure(bench, variant, {})
        step(plans[variant.name][0][:2])
    seconds = interleaved(variants, plans, tokens, run, rounds)
    residues = sum(len(s) for s in sequences)
    flop = 3 * sum(bench.forward_flop(n) for n in tokens)
    return [dict(model=bench.name, variant=v.name, proteins=len(sequences), steps=steps[v.name],
                 seconds=round(seconds[v.name], 3), residues_per_s=round(residues / seconds[v.name], 1),
                 vs_padded8=round(seconds["padded8"] / seconds[v.name], 2),
                 gflops=round(flop / seconds[v.name] / 1e9, 2),
                 projected_30_epochs_s=round(TRAIN_RESIDUES * seconds[v.name] / residues, 1))
            for v in variants]


# --- report -----------------------------------------------------------------------------


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_TFLOPS if key in name), None)


def _table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    print("| " + " | ".join(title for title, _, _ in columns) + " |")
    print("|" + "|".join("---" if fmt == "s" else "---:" for _, _, fmt in columns) + "|")
    for r in rows:
        print("| " + " | ".join(format(r[key], fmt) if r.get(key) is not None else "-" for _, key, fmt in columns)
              + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="esm2-8m,esmc-small", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--proteins", type=int, default=48, help="proteins scored per variant")
    parser.add_argument("--train-proteins", type=int, default=32, help="proteins per training pass (0: skip)")
    parser.add_argument("--rounds", type=int, default=6, help="interleaving rounds (see interleaved())")
    parser.add_argument("--esmc-backends", default="padded,nested",
                        help="further ESM C attention paths to time with synnav's batches (varlen needs CUDA)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(encoder)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", type=Path, help="draw lengths from this dataset file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--max-tokens", type=int, help="prediction token budget (default: synnav's)")
    parser.add_argument("--train-max-tokens", type=int, help="training token budget (default: synnav's)")
    parser.add_argument("--batch-size", type=int, default=8, help="training proteins per step")
    parser.add_argument("--peak-tflops", type=float, help="device peak for MFU (default: from the GPU's name)")
    parser.add_argument("--tolerance", type=float, default=2e-4, help="max |batched - single| allowed (fp32)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = hardware.pick_device(args.device)
    precision = hardware.resolve_precision(device, args.precision)
    peak = peak_tflops(device, args.peak_tflops)
    lengths = protein_lengths(args.proteins, args.seed, args.dataset)
    all_sequences = random_proteins(lengths, args.seed)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{torch.get_num_threads()} threads, precision {precision}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{len(lengths)} proteins, median {int(np.median(lengths))}, mean {np.mean(lengths):.0f}, "
          f"max {max(lengths)} residues, seed {args.seed}"
          f"{', lengths from ' + str(args.dataset) if args.dataset else ', log-normal lengths'}", flush=True)
    # A bf16 forward differs from fp32 by rounding alone, far above fp32's reordering noise.
    tolerance = args.tolerance if precision == "fp32" else max(args.tolerance, 5e-2)
    backends = [b for b in args.esmc_backends.split(",") if b]

    rows, train_rows = [], []
    for name in args.models.split(","):
        bench = build(name, device, "auto")
        esmc = name.startswith("esmc")
        sequences = [s[: bench.max_residues] for s in all_sequences]
        # A shape known by its width only (12 layers, 4x FFN), parameters counted from the encoder.
        memory = hardware.MemoryModel(params=sum(p.numel() for p in bench.encoder.parameters()),
                                      layers=12, width=bench.width, ffn_hidden=4 * bench.width)
        budget = hardware.plan_budget(device, memory, training=False, precision=precision,
                                      min_tokens=bench.max_residues + 2, requested=args.max_tokens)
        if esmc:
            print(f"{name}: synnav's attention path here is "
                  f"{bench.encoder.resolved_attention_backend(device, _compute_dtype(precision))}")
        variants = predict_variants(esmc, budget.max_tokens, backends, args.compile)
        found = bench_predict(bench, sequences, variants, device, precision, args.rounds)
        for r in found:
            assert r["max_abs_diff_vs_single"] <= tolerance, f"{name} {r['variant']}: {r['max_abs_diff_vs_single']:.2e}"
            r["mfu"] = round(r["gflops"] / (peak * 1e3), 4) if peak else None
            print(f"  {r['model']:12s} {r['variant']:16s} {r['seconds']:7.2f} s {r['residues_per_s']:9.0f} res/s "
                  f"x{r['vs_origin']:.2f} origin  padding {r['padding']:6.1%}", flush=True)
        rows += found
        if args.train_proteins:
            sub = sequences[: args.train_proteins]
            train_budget = hardware.plan_budget(device, memory, training=True, precision=precision,
                                                min_tokens=max(len(s) + 2 for s in sub),
                                                requested=args.train_max_tokens)
            found = bench_train(bench, sub, train_budget.max_tokens, args.batch_size, device, precision,
                                args.rounds)
            for r in found:
                r["mfu"] = round(r["gflops"] / (peak * 1e3), 4) if peak else None
                print(f"  {r['model']:12s} train {r['variant']:10s} {r['seconds']:7.2f} s "
                      f"{r['residues_per_s']:9.0f} res/s ({r['steps']} steps)", flush=True)
            train_rows += found
        del bench

    mfu = [("MFU", "mfu", ".1%")] if peak else []
    print("\nPrediction (pooled embeddings + head); x origin / x padded8 = speed relative to those")
    _table(rows, [("model", "model", "s"), ("variant", "variant", "s"), ("residues/s", "residues_per_s", ",.0f"),
                  ("x origin", "vs_origin", ".2f"), ("x padded8", "vs_padded8", ".2f"), ("padding", "padding", ".1%"),
                  ("batches", "batches", "d"), ("GFLOP/s", "gflops", ".1f"), *mfu,
                  ("max abs diff vs single", "max_abs_diff_vs_single", ".1e")])
    if train_rows:
        print("\nTraining (forward + backward + AdamW step)")
        _table(train_rows, [("model", "model", "s"), ("variant", "variant", "s"), ("proteins", "proteins", "d"),
                            ("steps", "steps", "d"), ("residues/s", "residues_per_s", ",.0f"),
                            ("x padded8", "vs_padded8", ".2f"), ("GFLOP/s", "gflops", ".1f"), *mfu])
    if device.type == "cuda":
        print("\nIssue targets (meaningful for esmc-600m on an H100):")
        for r in rows:
            if r["variant"] == "synnav":
                print(f"  {r['model']}: 11M-residue proteome in ~{r['projected_proteome_s']:.0f} s "
                      f"(target <= {PROTEOME_TARGET_S:.0f} s)")
        for r in train_rows:
            if r["variant"] == "synnav":
                print(f"  {r['model']}: 30 epochs x 4,600 x 550 residues in ~{r['projected_30_epochs_s'] / 60:.1f} "
                      f"min (target < {TRAIN_TARGET_S / 60:.0f} min)")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "torch": torch.__version__, "device": str(device),
                                         "precision": precision, "predict": rows, "train": train_rows}, indent=1))
    return 0


def _compute_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


if __name__ == "__main__":
    sys.exit(main())
