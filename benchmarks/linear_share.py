#!/usr/bin/env python3
"""How much of ESM C's fp32 CPU forward is matrix products: the ceiling of any fp32 speed-up.

Each protein of benchmarks/small_job.py's set goes through synnav's ESM C encoder (random
weights of the full size, one thread, inference mode), then the same linear products alone -
per layer, the q/k/v projection, the output projection and the SwiGLU FFN's two, at that
protein's token count - through ``F.linear`` (MKL's sgemm, which the esm package's forward also
runs). Both are timed in this one process. The products' share bounds what any change outside
them can gain: with everything else free, the forward takes the products' time.

Usage (from the repository root, synnav's environment active):
    python benchmarks/linear_share.py [--proteins 16] [--width 1152 --layers 36 --heads 18]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from small_job import _proteins

from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.backbones.esmc_model import ESMCConfig, ESMCEncoder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proteins", type=int, default=16)
    parser.add_argument("--width", type=int, default=1152)
    parser.add_argument("--layers", type=int, default=36)
    parser.add_argument("--heads", type=int, default=18)
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = ESMCConfig(args.width, args.heads, args.layers)
    encoder = ESMCEncoder(config).eval()
    # A layer's products: (in, out) of each weight, read off the first block's linear modules.
    shapes = [
        (m.in_features, m.out_features)
        for m in encoder.transformer.blocks[0].modules()
        if isinstance(m, torch.nn.Linear)
    ]
    weights = [torch.randn(out, width) * 0.02 for width, out in shapes]

    forward = products = 0.0
    tokens = 0
    with torch.inference_mode():
        for _, sequence in _proteins(args.proteins):
            batch = ESM_VOCABULARY.batch([sequence])
            started = time.perf_counter()
            encoder(batch.input_ids, batch.attention_mask)
            forward += time.perf_counter() - started
            rows = batch.input_ids.shape[1]
            tokens += rows
            inputs = [torch.randn(rows, width) for width, _ in shapes]
            started = time.perf_counter()
            for _ in range(args.layers):
                for x, w in zip(inputs, weights):
                    F.linear(x, w)
            products += time.perf_counter() - started

    flops = 2 * tokens * args.layers * sum(a * b for a, b in shapes)
    print(
        f"{args.proteins} proteins ({tokens} tokens), ESM C {args.width}x{args.layers}, one thread: "
        f"forward {forward:.1f} s; its linear products alone {products:.1f} s "
        f"({products / forward:.0%}, {flops / products / 1e9:.0f} GFLOP/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
