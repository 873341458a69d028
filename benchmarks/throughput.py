"""Prediction and training throughput (residues/s) of synnav's batching, side by side.

Three ways of feeding the same proteins through the same model:

``sorted``   synnav: length-sorted batches bounded by a token budget (``batching.inference_batches``)
``single``   one protein per forward, the origin's approach
``fixed8``   8 proteins per batch in input order, padded to the longest of the 8

Weights are random: speed does not depend on their values, so no download is needed. Before
timing, every strategy's pooled embeddings are checked against the one-at-a-time ones (batching
and padding must not change a protein's result).

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
the model FLOP utilisation (MFU = useful FLOP/s / the device's dense peak) reported on GPUs.

Run ``python benchmarks/throughput.py --help`` for the options; docs/benchmarks.md has results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from synnav_cli import batching, hardware
from synnav_cli.backbones.base import TokenBatch
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.model import LocalizationModel, masked_bce

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


def build(name: str, device: torch.device, backend: str = "padded") -> Bench:
    torch.manual_seed(0)
    encoder, layers, width, limit = MODELS[name](backend)
    model = LocalizationModel(encoder, width, NUM_LABELS).to(device)
    label = name if not name.startswith("esmc") else f"{name} [{backend}]"
    return Bench(label, model, limit, _matmul_params(encoder), layers, width, encoder)


# --- data -------------------------------------------------------------------------------


def protein_lengths(count: int, seed: int, dataset: Path | None) -> list[int]:
    """Lengths from a dataset file, else log-normal with median 480 clipped to 50..1800."""
    rng = np.random.default_rng(seed)
    if dataset is not None:
        from synnav_cli.data import read_dataset

        pool = np.array([len(s) for s in read_dataset(dataset).sequences])
        return [int(x) for x in rng.choice(pool, size=count, replace=len(pool) < count)]
    # sigma 0.6 gives a long tail like UniProt's (about 1 protein in 20 over 1300 residues).
    lengths = rng.lognormal(mean=np.log(480), sigma=0.6, size=count)
    return [int(x) for x in np.clip(lengths, 50, 1800)]


def random_proteins(lengths: list[int], seed: int) -> list[str]:
    rng = np.random.default_rng(seed + 1)
    alphabet = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    return ["".join(rng.choice(alphabet, size=n)) for n in lengths]


# --- strategies -------------------------------------------------------------------------


def plan(strategy: str, tokens: list[int], max_tokens: int) -> list[list[int]]:
    if strategy == "sorted":
        return batching.inference_batches(tokens, max_tokens)
    if strategy == "single":
        return [[i] for i in range(len(tokens))]
    if strategy.startswith("fixed"):
        size = int(strategy.removeprefix("fixed"))
        return [list(range(i, min(i + size, len(tokens)))) for i in range(0, len(tokens), size)]
    raise ValueError(strategy)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def embed_all(bench: Bench, sequences: list[str], batches: list[list[int]], device, precision) -> np.ndarray:
    out = np.zeros((len(sequences), bench.width), dtype=np.float32)
    bench.model.eval()
    for index in batches:
        batch = ESM_VOCABULARY.batch([sequences[i] for i in index]).to(device)
        with hardware.autocast(device, precision):
            pooled = bench.model.embed(batch)
            bench.model.head(pooled)  # a prediction runs the head too
        out[index] = pooled.float().cpu().numpy()
    return out


def padded_tokens(tokens: list[int], batches: list[list[int]]) -> int:
    return sum(batching.padded_cost([tokens[i] for i in index]) for index in batches)


def time_predict(bench, sequences, batches, device, precision) -> tuple[float, np.ndarray]:
    # Warm-up on the first (longest, for sorted) batches: allocator, kernels, thread pool.
    embed_all(bench, sequences, batches[:2], device, precision)
    _sync(device)
    start = time.perf_counter()
    result = embed_all(bench, sequences, batches, device, precision)
    _sync(device)
    return time.perf_counter() - start, result


def time_train(bench, sequences, tokens, max_tokens, batch_size, device, precision) -> tuple[float, int, int]:
    """Seconds, residues and steps for one pass of optimiser steps over ``sequences``."""
    model = bench.model
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    batches = batching.training_batches(tokens, max_tokens, batch_size, np.random.default_rng(0))
    targets = torch.randint(0, 2, (len(sequences), NUM_LABELS), dtype=torch.float32)
    pos_weight = torch.ones(NUM_LABELS, device=device)

    def step(index):
        batch: TokenBatch = ESM_VOCABULARY.batch([sequences[i] for i in index]).to(device)
        with hardware.autocast(device, precision):
            logits = model(batch)
        loss = masked_bce(logits, targets[index].to(device), pos_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step(batches[0])
    _sync(device)
    start = time.perf_counter()
    for index in batches:
        step(index)
    _sync(device)
    residues = sum(len(sequences[i]) for index in batches for i in index)
    return time.perf_counter() - start, residues, len(batches)


# --- report -----------------------------------------------------------------------------


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in GPU_PEAK_TFLOPS if key in name), None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="esm2-8m,esmc-small", help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--proteins", type=int, default=200)
    parser.add_argument("--train-proteins", type=int, default=48, help="proteins per training pass (0: skip)")
    parser.add_argument("--strategies", default="sorted,single,fixed8")
    parser.add_argument("--esmc-backends", default="padded,nested",
                        help="ESM C attention paths to time with sorted batches (varlen needs CUDA)")
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
    strategies = args.strategies.split(",")
    lengths = protein_lengths(args.proteins, args.seed, args.dataset)
    all_sequences = random_proteins(lengths, args.seed)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"{torch.get_num_threads()} threads, precision {precision}")
    print(f"{len(lengths)} proteins, median {int(np.median(lengths))}, mean {np.mean(lengths):.0f}, "
          f"max {max(lengths)} residues, seed {args.seed}"
          f"{', lengths from ' + str(args.dataset) if args.dataset else ', log-normal lengths'}")
    # A bf16 forward differs from fp32 by rounding alone, far above fp32's reordering noise.
    tolerance = args.tolerance if precision == "fp32" else max(args.tolerance, 5e-2)

    rows, train_rows = [], []
    for name in args.models.split(","):
        variants = [b for b in args.esmc_backends.split(",")] if name.startswith("esmc") else ["padded"]
        for v, backend in enumerate(variants):
            bench = build(name, device, backend)
            sequences = [s[: bench.max_residues] for s in all_sequences]
            tokens = [len(s) + 2 for s in sequences]
            residues = sum(len(s) for s in sequences)
            useful = sum(bench.forward_flop(n) for n in tokens)
            max_tokens = args.max_tokens or hardware.default_token_budget(
                device, embedding_dim=bench.width, training=False)
            # One-at-a-time results are the reference for the correctness check. The other
            # attention paths (same seed, so the same weights) run synnav's batching alone and are
            # checked against the first path's single-protein results.
            if v == 0:
                todo, reference = ["single", *[s for s in strategies if s != "single"]], None
            else:
                todo = ["sorted"]
            results = {}
            for strategy in todo:
                batches = plan(strategy, tokens, max_tokens)
                seconds, pooled = time_predict(bench, sequences, batches, device, precision)
                if strategy == "single":
                    reference = pooled
                diff = float(np.abs(pooled - reference).max())
                assert diff <= tolerance, f"{bench.name} {strategy}: max |diff| {diff:.2e} > {tolerance}"
                results[strategy] = dict(
                    model=bench.name, strategy=strategy, seconds=round(seconds, 3),
                    residues_per_s=round(residues / seconds, 1), batches=len(batches),
                    padding=round(padded_tokens(tokens, batches) / sum(tokens) - 1, 4),
                    max_abs_diff_vs_single=diff, gflops=round(useful / seconds / 1e9, 2),
                    mfu=round(useful / seconds / (peak * 1e12), 4) if peak else None,
                    projected_proteome_s=round(PROTEOME_RESIDUES * seconds / residues, 1),
                )
                print(f"  {bench.name:22s} {strategy:7s} {seconds:7.2f} s  "
                      f"{residues / seconds:9.0f} res/s  padding {results[strategy]['padding']:6.1%}  "
                      f"max|diff| {diff:.1e}", flush=True)
            if v == 0:
                single_seconds = results["single"]["seconds"]
            for strategy in [s for s in strategies if s in results] if v == 0 else ["sorted"]:
                r = results[strategy]
                r["vs_single"] = round(single_seconds / r["seconds"], 2)
                rows.append(r)
            if args.train_proteins and v == 0:
                sub = sequences[: args.train_proteins]
                sub_tokens = tokens[: args.train_proteins]
                train_tokens = args.train_max_tokens or hardware.default_token_budget(
                    device, embedding_dim=bench.width, training=True)
                train_tokens = max(train_tokens, max(sub_tokens))
                seconds, res, steps = time_train(bench, sub, sub_tokens, train_tokens, args.batch_size,
                                                 device, precision)
                flop = 3 * sum(bench.forward_flop(len(sub[i]) + 2) for i in range(len(sub)))
                train_rows.append(dict(
                    model=bench.name, proteins=len(sub), steps=steps, seconds=round(seconds, 3),
                    residues_per_s=round(res / seconds, 1), gflops=round(flop / seconds / 1e9, 2),
                    mfu=round(flop / seconds / (peak * 1e12), 4) if peak else None,
                    projected_30_epochs_s=round(TRAIN_RESIDUES * seconds / res, 1),
                ))
                print(f"  {bench.name:22s} train   {seconds:7.2f} s  {res / seconds:9.0f} res/s "
                      f"({steps} steps)", flush=True)
            del bench

    print("\nPrediction (pooled embeddings + head); 'x single' = speed relative to one protein at a time")
    print(f"| model | strategy | residues/s | x single | padding | batches | GFLOP/s |"
          f"{' MFU |' if peak else ''} max abs diff vs single |")
    print(f"|---|---|---:|---:|---:|---:|---:|{'---:|' if peak else ''}---:|")
    for r in rows:
        mfu = f" {r['mfu']:.1%} |" if peak else ""
        print(f"| {r['model']} | {r['strategy']} | {r['residues_per_s']:,.0f} | {r['vs_single']:.2f} | "
              f"{r['padding']:.1%} | {r['batches']} | {r['gflops']:.1f} |{mfu} {r['max_abs_diff_vs_single']:.1e} |")
    esmc = {r["model"]: r for r in rows if r["strategy"] == "sorted" and r["model"].startswith("esmc")}
    padded = {k.split(" [")[0]: v for k, v in esmc.items() if k.endswith("[padded]")}
    for key, r in esmc.items():
        base = padded.get(key.split(" [")[0])
        if base is not None and r is not base:
            print(f"{key}: {base['seconds'] / r['seconds']:.2f}x the speed of the padded (masked SDPA) path")
    if train_rows:
        print("\nTraining (forward + backward + AdamW step, synnav's training batches)")
        print(f"| model | proteins | steps | residues/s | GFLOP/s |{' MFU |' if peak else ''}")
        print(f"|---|---:|---:|---:|---:|{'---:|' if peak else ''}")
        for r in train_rows:
            mfu = f" {r['mfu']:.1%} |" if peak else ""
            print(f"| {r['model']} | {r['proteins']} | {r['steps']} | {r['residues_per_s']:,.0f} | "
                  f"{r['gflops']:.1f} |{mfu}")
    if device.type == "cuda":
        print("\nIssue targets (meaningful for esmc-600m on an H100):")
        for r in rows:
            if r["strategy"] == "sorted":
                print(f"  {r['model']}: 11M-residue proteome in ~{r['projected_proteome_s']:.0f} s "
                      f"(target <= {PROTEOME_TARGET_S:.0f} s)")
        for r in train_rows:
            print(f"  {r['model']}: 30 epochs x 4,600 x 550 residues in ~{r['projected_30_epochs_s'] / 60:.1f} min "
                  f"(target < {TRAIN_TARGET_S / 60:.0f} min)")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "torch": torch.__version__, "device": str(device),
                                         "precision": precision, "predict": rows, "train": train_rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
