#!/usr/bin/env python3
"""A small job, whole processes: `synnav embed` against the official packages, start to exit.

What a user waits for when embedding a handful of proteins is the whole process: interpreter
start, imports, plugin discovery, loading the weights, the first forward's warm-up, then the
forwards. Each contender here is a fresh process that embeds the same proteins (mean-pooled
residue embeddings) from the same random full-size weights, laid out in a Hugging Face hub cache
exactly as a download leaves them (tests/hub_weights.py), so nothing touches the network:

``synnav``
    ``synnav embed FASTA -b <backbone> -o out.npz --offline --threads 1 --precision fp32``
    (``--precision bf16`` with this script's ``--precision bf16``: other numbers, measured too).
``esm``
    EvolutionaryScale's ``esm`` package (3.2.1.post1, the environment of benchmarks/peer_venv.sh)
    as its README shows: ``ESMC.from_pretrained("esmc_600m")``, then per protein
    ``client.encode(ESMProtein(sequence=...))`` and ``client.logits(..., LogitsConfig(sequence=
    True, return_embeddings=True))``; the mean of the residues' embeddings.
``transformers``
    ``AutoTokenizer.from_pretrained`` and ``EsmModel.from_pretrained`` of the ESM2 repository,
    one protein a call, as transformers' documentation shows (same environment).

Rounds alternate the order of the contenders, so load from other jobs falls on all alike; the
best of ``--rounds`` is reported per contender, with its ratio to the peer. Every process runs
with one thread (``OMP_NUM_THREADS=1`` and, for synnav, ``--threads 1``). Before timing, each
side's embeddings are compared (the same weights must give the same numbers).

Usage (from the repository root, synnav's environment active):
    python benchmarks/small_job.py [--models esmc-600m esm2-8m] [--rounds 2] [--proteins 16]
        [--peer-python /tmp/synnav-parity-venv/bin/python] [--workdir DIR] [--precision bf16]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

# name -> (synnav backbone, peer, the peer's model name or repository)
MODELS = {
    "esmc-600m": ("esmc600m", "esm", "esmc_600m"),
    "esmc-300m": ("esmc300m", "esm", "esmc_300m"),
    "esm2-8m": ("esm2_8m", "transformers", "facebook/esm2_t6_8M_UR50D"),
}
# transformers' tokenizer files of the facebook/esm2_* repositories (they are the same for all).
ESM2_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>",
              "<mask>"]  # fmt: skip
ESM2_TOKENIZER_FILES = {
    "vocab.txt": "\n".join(ESM2_VOCAB) + "\n",
    "tokenizer_config.json": json.dumps(
        {"model_max_length": 1000000000000000019884624838656, "tokenizer_class": "EsmTokenizer"}
    ),
    "special_tokens_map.json": json.dumps(
        {
            "cls_token": "<cls>",
            "eos_token": "<eos>",
            "mask_token": "<mask>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
        }
    ),
}

ESM_PEER = """
import sys, numpy as np, torch
from esm.models.esmc import ESMC
from esm.sdk.api import ESMProtein, LogitsConfig
sequences = [line.split()[1] for line in open(sys.argv[2])]
client = ESMC.from_pretrained(sys.argv[1]).to("cpu")
pooled = []
for sequence in sequences:
    tensor = client.encode(ESMProtein(sequence=sequence))
    out = client.logits(tensor, LogitsConfig(sequence=True, return_embeddings=True))
    pooled.append(out.embeddings[0, 1:-1].float().mean(dim=0).numpy())
np.save(sys.argv[3], np.stack(pooled))
"""
TRANSFORMERS_PEER = """
import sys, numpy as np, torch
from transformers import AutoTokenizer, EsmModel
sequences = [line.split()[1] for line in open(sys.argv[2])]
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
model = EsmModel.from_pretrained(sys.argv[1], add_pooling_layer=False).eval()
pooled = []
with torch.inference_mode():
    for sequence in sequences:
        inputs = tokenizer(sequence, return_tensors="pt")
        hidden = model(**inputs).last_hidden_state
        pooled.append(hidden[0, 1:-1].mean(dim=0).numpy())
np.save(sys.argv[3], np.stack(pooled))
"""


def _proteins(count: int, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` human proteins of the shipped dataset, drawn at random among those of 50-1,000
    residues (real lengths; ESM2 takes 1,022)."""
    records = json.loads((HERE.parent / "data" / "dataset.json").read_text())
    chosen = [r for r in records if 50 <= len(r["sequence"]) <= 1000]
    picked = random.Random(seed).sample(chosen, count)
    return [(r["entry"], r["sequence"]) for r in picked]


def _lay_out_weights(workdir: Path, backbone_id: str) -> None:
    """Random full-size weights where synnav and the peer both look (the same hub cache)."""
    from hub_weights import cache_random_weights, cache_repo

    from synnav_cli.plugins import get_backbone

    hub = workdir / "hub"
    marker = hub / f".{backbone_id}-done"
    if marker.exists():
        return
    # fp32 ESM C weights: synnav and the esm package then start from the very same numbers.
    import torch

    cache_random_weights(backbone_id, hub, seed=0, dtype=torch.float32)
    backbone = get_backbone(backbone_id)
    if backbone_id.startswith("esm2"):
        cache_repo(
            hub, backbone.weights_repo, {k: v.encode() for k, v in ESM2_TOKENIZER_FILES.items()}
        )
    marker.write_text("")


def _command(name: str, model: str, args, workdir: Path, proteins: Path) -> tuple[list[str], dict]:
    backbone, peer, peer_model = MODELS[model]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "SYNNAV_CACHE_DIR": str(workdir),
        "HF_HUB_CACHE": str(workdir / "hub"),
    }
    env.pop("SYNNAV_THREADS", None)
    out = workdir / f"{name}-{model}"
    if name == "synnav":
        fasta = proteins.with_suffix(".fasta")
        return [
            sys.executable,
            "-m",
            "synnav_cli",
            "embed",
            str(fasta),
            "-b",
            backbone,
            "-o",
            f"{out}.npz",
            "--offline",
            "--threads",
            "1",
            "--precision",
            args.precision,
            "-q",
        ], env
    script = ESM_PEER if peer == "esm" else TRANSFORMERS_PEER
    return [args.peer_python, "-c", script, peer_model, str(proteins), f"{out}.npy"], env


def _run(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds


def _same_numbers(workdir: Path, model: str) -> float:
    ours = np.load(workdir / f"synnav-{model}.npz")["embeddings"]
    theirs = np.load(workdir / f"peer-{model}.npy")
    return float(np.abs(ours - theirs).max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["esmc-600m", "esm2-8m"], choices=MODELS)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--proteins", type=int, default=16)
    parser.add_argument(
        "--peer-python",
        default=os.environ.get("SYNNAV_PEER_PYTHON", "/tmp/synnav-parity-venv/bin/python"),
    )
    parser.add_argument("--workdir", type=Path, help="keep the weights here between runs")
    parser.add_argument("--json", type=Path, help="also write the timings here")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "bf16"],
        help="synnav's --precision (the peers run fp32, as they do on CPU); bf16 changes the "
        "numbers, and the table's last column says by how much",
    )
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="synnav-small-job-"))
    workdir.mkdir(parents=True, exist_ok=True)
    proteins = _proteins(args.proteins)
    table = workdir / "proteins.txt"
    table.write_text("".join(f"{entry} {sequence}\n" for entry, sequence in proteins))
    table.with_suffix(".fasta").write_text("".join(f">{e}\n{s}\n" for e, s in proteins))
    for model in args.models:
        _lay_out_weights(workdir, MODELS[model][0])

    times: dict[str, dict[str, list[float]]] = {m: {"synnav": [], "peer": []} for m in args.models}
    for round_ in range(args.rounds):
        for model in args.models:
            order = ["synnav", "peer"] if round_ % 2 == 0 else ["peer", "synnav"]
            for name in order:
                command, env = _command(name, model, args, workdir, table)
                times[model][name].append(_run(command, env))
                print(
                    f"round {round_ + 1} {model} {name}: {times[model][name][-1]:.2f} s",
                    file=sys.stderr,
                )

    load = os.getloadavg()
    print(
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; {args.proteins} proteins "
        f"(median {int(np.median([len(s) for _, s in proteins]))} residues), one thread, "
        f"best of {args.rounds}, synnav --precision {args.precision}\n"
    )
    print("| model | peer | peer s | synnav s | synnav speed-up | max abs diff of embeddings |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        peer, synnav = min(times[model]["peer"]), min(times[model]["synnav"])
        print(
            f"| {model} | {MODELS[model][1]} | {peer:.2f} | {synnav:.2f} | {peer / synnav:.2f}x "
            f"| {_same_numbers(workdir, model):.1e} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"times": times, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
