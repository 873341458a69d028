"""What reduced precision costs on CPU: the bundled model's decisions, the ESM backbones' embeddings.

``bundled``
    The bundled model (real trained weights) over the test split of data/dataset.json, scored
    through synnav's own path (``open_model`` + ``score_sequences``, as ``synnav evaluate`` does)
    at ``--precision fp32`` and ``--precision bf16``, and with the encoder's linear layers
    dynamically quantised to int8 (``torch.ao.quantization.quantize_dynamic``; measured, not
    offered). Against fp32: the largest and mean probability change, the changed calls (protein x
    label decisions at the model's thresholds) and the proteins with any changed call, and the
    mean F1 / ROC-AUC each way. Seconds per pass, variants interleaved over ``--rounds``.
``backbones``
    ESM2-8M and ESM C 300M with random weights (seed 0) on random proteins: pooled embeddings
    (what a head reads) of bf16 on cast weights (synnav's ``--precision bf16`` on CPU), bf16
    autocast and int8 against fp32: largest absolute difference, the same relative to the
    largest fp32 value, and the least cosine similarity.

Usage (from the repository root; one thread, as the rest of the CPU measurements):
    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/precision_cost.py \\
        --out benchmarks/results/<date>-cpu-precision-cost.json
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from synnav_cli.data.dataset import assign_splits, read_dataset, same_label
from synnav_cli.metrics import evaluate_predictions
from synnav_cli.model import LocalizationModel
from synnav_cli.modeldir import read_model_info
from synnav_cli.plugins import get_backbone
from synnav_cli.resources import bundled_model_path
from synnav_cli.runtime import hardware
from synnav_cli.scoring.load import LoadedModel, cast_encoder, open_model
from synnav_cli.scoring.score import Runtime, score_sequences
from synnav_cli.train.embedding_cache import pooled_embeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import random_proteins
from peers import cpu_facts

CPU = torch.device("cpu")


def quantised(model: LocalizationModel) -> LocalizationModel:
    """A copy whose encoder's linear layers are dynamically quantised to int8 (head kept fp32)."""
    copied = copy.deepcopy(model)
    with warnings.catch_warnings():  # torch.ao.quantization announces its removal
        warnings.simplefilter("ignore")
        copied.encoder = torch.ao.quantization.quantize_dynamic(
            copied.encoder, {torch.nn.Linear}, dtype=torch.qint8
        )
    return copied


def test_split(data: Path, info) -> tuple[list[str], np.ndarray]:
    """The split ``synnav evaluate --split test`` scores, and its labels in the model's order."""
    dataset = read_dataset(data)
    seed = int(info.meta.get("config", {}).get("seed", 0))
    dataset = assign_splits(dataset, seed=seed).subset("test")
    columns = [
        next(j for j, d in enumerate(dataset.label_names) if same_label(n, d))
        for n in info.label_names
    ]
    return list(dataset.sequences), dataset.labels[:, columns]


def bundled(data: Path, rounds: int) -> dict:
    info = read_model_info(Path(bundled_model_path()))
    sequences, labels = test_split(data, info)
    loaded: dict[str, LoadedModel] = {
        p: open_model(info, device="cpu", precision=p, offline=True) for p in ("fp32", "bf16")
    }
    fp32 = loaded["fp32"]
    sequences = [s[: fp32.max_length] for s in sequences]
    variants = {
        "fp32": (fp32.model, fp32.runtime),
        "bf16": (loaded["bf16"].model, loaded["bf16"].runtime),
        "int8": (quantised(fp32.model), fp32.runtime),
    }
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    probs: dict[str, np.ndarray] = {}
    names = list(variants)
    for r in range(rounds):
        for k in range(len(names)):
            v = names[(r + k) % len(names)]
            model, runtime = variants[v]
            start = time.perf_counter()
            probs[v] = score_sequences(model, fp32.backbone, sequences, runtime)
            seconds[v].append(round(time.perf_counter() - start, 3))
    thresholds = np.asarray(info.thresholds)
    reference = probs["fp32"]
    rows = []
    for v in names:
        change = np.abs(probs[v] - reference)
        flipped = (probs[v] >= thresholds) != (reference >= thresholds)
        metrics = evaluate_predictions(labels, probs[v], info.label_names, list(thresholds))
        rows.append({
            "variant": v, "seconds_per_round": seconds[v],
            "x_fp32_speed": round(sum(seconds["fp32"]) / sum(seconds[v]), 2),
            "max_probability_change": float(change.max()),
            "mean_probability_change": float(change.mean()),
            "changed_calls": int(flipped.sum()),
            "proteins_with_a_changed_call": int(flipped.any(axis=1).sum()),
            "mean_f1": float(metrics["mean"]["f1"]),
            "mean_roc_auc": float(metrics["mean"]["roc_auc"]),
        })  # fmt: skip
    return {
        "model": info.meta.get("description", info.meta["backbone"]),
        "runtime_bf16": {"precision": loaded["bf16"].runtime.precision,
                         "weights_cast": loaded["bf16"].runtime.weights_cast},  # fmt: skip
        "proteins": len(sequences),
        "calls": int(labels.size),  # proteins x labels: one call each
        "max_tokens": fp32.runtime.max_tokens,
        "rows": rows,
    }


def backbone_diffs(name: str, sequences: list[str]) -> dict:
    backbone = get_backbone(name)
    torch.manual_seed(0)
    model = LocalizationModel(backbone.build_encoder(pretrained=False), backbone.embedding_dim, 6)
    model.eval()
    sequences = [s[: backbone.max_length] for s in sequences]
    tokens = hardware.CPU_PREDICT_TOKENS
    cast = Runtime(CPU, "bf16", tokens, weights_cast=True)
    bf16_model = copy.deepcopy(model)
    cast_encoder(bf16_model.encoder, cast)
    variants = {
        "fp32": (model, Runtime(CPU, "fp32", tokens)),
        "bf16 (cast weights)": (bf16_model, cast),
        "bf16 autocast": (model, Runtime(CPU, "bf16", tokens)),
        "int8": (quantised(model), Runtime(CPU, "fp32", tokens)),
    }
    pooled = {v: pooled_embeddings(m, backbone, sequences, rt) for v, (m, rt) in variants.items()}
    reference = pooled["fp32"].astype(np.float64)
    rows = []
    for v, found in pooled.items():
        found = found.astype(np.float64)
        cosine = (found * reference).sum(1) / (
            np.linalg.norm(found, axis=1) * np.linalg.norm(reference, axis=1)
        )
        diff = float(np.abs(found - reference).max())
        rows.append({"variant": v, "max_abs_diff": diff,
                     "relative_to_largest": diff / float(np.abs(reference).max()),
                     "min_cosine": float(cosine.min())})  # fmt: skip
    return {"backbone": name, "proteins": len(sequences), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data/dataset.json"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backbones", default="esm2_8m,esmc300m", help="'' to skip them")
    parser.add_argument("--proteins", type=int, default=12, help="random proteins a backbone")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "environment": {
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **cpu_facts(), "native_bf16": hardware.cpu_has_native_bf16(),
            "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "load_average_start": os.getloadavg(),
            "argv": sys.argv,
        },
    }  # fmt: skip
    if not hardware.cpu_has_native_bf16():
        print("note: this CPU has no native bf16; --precision bf16 runs fp32 here", file=sys.stderr)
    result["bundled"] = bundled(args.data, args.rounds)
    print(json.dumps(result["bundled"]["rows"], indent=1), file=sys.stderr)
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in np.clip(rng.lognormal(np.log(300), 0.6, args.proteins), 30, 1000)]
    sequences = random_proteins(lengths, 0)
    result["backbones"] = []
    for name in filter(None, args.backbones.split(",")):
        result["backbones"].append(backbone_diffs(name, sequences))
        print(json.dumps(result["backbones"][-1]["rows"], indent=1), file=sys.stderr)
    result["environment"]["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
