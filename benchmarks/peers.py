"""synnav against the real peers on the same work: same random weights, same proteins, same cores.

Variants, each producing mean-pooled residue embeddings of every protein:

``esm:single`` / ``esm:batch8``
    ESM C through EvolutionaryScale's own ``esm`` package (3.2.1.post1), one protein a call, or
    length-sorted batches of 8 padded with the pad token. It runs in its own environment
    (benchmarks/peer_venv.sh, the recipe of .ci/parity-esmc.sh) as a worker process
    (benchmarks/peer_worker.py); the random weights are handed over as a state dict.
``transformers:single`` / ``transformers:batch8``
    ESM2 through transformers' ``EsmModel`` called directly, the same two ways.
``synnav``
    ``pooled_embeddings`` with synnav's defaults for the device (token budget, attention path).
``synnav:N`` / ``synnav:single`` / ``synnav:bf16[:N]`` / ``synnav:bf16w[:N]`` / ``synnav:int8[:N]``
    the same with a budget of N tokens, one protein a batch, bf16 autocast, the encoder's weights
    cast to bf16, or its linear layers quantised to int8 (``--synnav-variants``).
``synnav:esmmodel[:N]`` / ``synnav:mkl[:N]``
    synnav's scoring with transformers' ``EsmModel`` forward (ESM2 only; the default before the
    packed forward), or with its fp32 linear layers on ``F.linear`` (MKL) instead of oneDNN
    (ESM2's packed forward and ESM C).

Interleaved: in every round each variant embeds all the proteins once, in an order that rotates
from round to round, so a load that comes and goes on a shared machine falls on all variants
alike. Before anything is reported, each variant's pooled embeddings are compared with the peer's
one-protein-a-call ones. A matmul roofline (large fp32 and bf16 ``torch.mm``) is measured on the
same cores at each thread count, so each variant's useful FLOP rate (forward FLOP model as in
gpu_check.py) is also given as a share of what the cores reach on a plain matrix multiplication.

Results go to ``benchmarks/results/<date>-<host>-peers.json``; ``--markdown FILE`` prints the
summary table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from synnav_cli.backbones import cpu_linear  # _ONEDNN_LINEAR, switched off by synnav:mkl
from synnav_cli.model import LocalizationModel
from synnav_cli.plugins import get_backbone  # Backbone: build_encoder, embedding_dim, max_length

# The package surface this script depends on (src/ is being restructured: keep it small).
from synnav_cli.runtime import hardware  # plan_budget, memory_model
from synnav_cli.scoring.load import cast_encoder
from synnav_cli.scoring.score import Runtime
from synnav_cli.train.embedding_cache import pooled_embeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import matmul_params, random_proteins, shape_of

HERE = Path(__file__).resolve().parent
# name -> (synnav backbone, peer)
MODELS = {
    "esm2-8m": ("esm2_8m", "transformers"),
    "esmc-300m": ("esmc300m", "esm"),
    "esmc-600m": ("esmc600m", "esm"),
}
# The ESM vocabulary (ESM2's and ESM C's alike): <cls>=0 <pad>=1 <eos>=2 <unk>=3, residues from 4.
ESM_TOKENS = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-"]
SAME_NUMBERS = 1e-4


# --- peers ------------------------------------------------------------------------------


class TransformersPeer:
    """transformers' EsmModel, used as its documentation shows, with synnav's random weights."""

    def __init__(self, synnav_encoder: torch.nn.Module) -> None:
        from transformers import EsmConfig, EsmModel

        layers, width = shape_of(synnav_encoder)
        source = synnav_encoder.esm.config  # the architecture synnav built, to copy
        config = EsmConfig(
            vocab_size=33, mask_token_id=32, pad_token_id=1, hidden_size=width,
            num_hidden_layers=layers, num_attention_heads=source.num_attention_heads,
            intermediate_size=source.intermediate_size, max_position_embeddings=1026,
            position_embedding_type="rotary", token_dropout=True, emb_layer_norm_before=False,
            layer_norm_eps=1e-5,
        )  # fmt: skip
        self.model = EsmModel(config, add_pooling_layer=False).eval()
        state = {k.removeprefix("esm."): v for k, v in synnav_encoder.state_dict().items()}
        self.model.load_state_dict(state, strict=True)
        self.attention = getattr(self.model.config, "_attn_implementation", None)
        self.ids = {t: i for i, t in enumerate(ESM_TOKENS)}

    def tokenize(self, sequences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(s) for s in sequences) + 2
        ids = torch.full((len(sequences), length), 1, dtype=torch.long)
        for row, s in enumerate(sequences):
            ids[row, : len(s) + 2] = torch.tensor([0, *(self.ids.get(c, 3) for c in s), 2])
        return ids, ids != 1

    @torch.inference_mode()
    def run(self, sequences: list[str], mode: str, threads: int) -> tuple[float, np.ndarray]:
        size = 1 if mode == "single" else 8
        order = list(range(len(sequences)))
        if mode != "single":
            order.sort(key=lambda i: -len(sequences[i]))
        pooled = np.zeros((len(sequences), self.model.config.hidden_size), dtype=np.float32)
        start = time.perf_counter()
        for at in range(0, len(order), size):
            index = order[at : at + size]
            ids, mask = self.tokenize([sequences[i] for i in index])
            hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
            for row, i in enumerate(index):
                pooled[i] = hidden[row, 1 : len(sequences[i]) + 1].mean(dim=0).numpy()
        return time.perf_counter() - start, pooled


class EsmPeer:
    """The official esm package in its own environment, as a worker process."""

    def __init__(self, synnav_encoder: torch.nn.Module, python: str, workdir: Path) -> None:
        config = synnav_encoder.config
        weights = workdir / "esmc-weights.pt"
        torch.save(synnav_encoder.state_dict(), weights)
        self.process = subprocess.Popen(
            [python, str(HERE / "peer_worker.py")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, env={**os.environ, "PYTHONPATH": ""},
        )  # fmt: skip
        reply = self._ask(cmd="load", d_model=config.d_model, n_heads=config.n_heads,
                          n_layers=config.n_layers, weights=str(weights))  # fmt: skip
        weights.unlink()
        if reply["missing"] or reply["unexpected"]:
            raise RuntimeError(f"synnav's weights do not fit the official ESMC: {reply}")
        self.versions = {"esm": reply["esm_version"], "torch_in_esm_env": reply["torch"]}
        self.attention = "esm: padded, masked (use_flash_attn=False)"

    def _ask(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the esm worker ended (exit code {self.process.poll()})")
        return json.loads(line)

    def run(self, sequences: list[str], mode: str, threads: int) -> tuple[float, np.ndarray]:
        reply = self._ask(cmd="run", mode=mode, sequences=sequences, threads=threads)
        return reply["seconds"], np.asarray(reply["pooled"], dtype=np.float32)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


class Synnav:
    """``pooled_embeddings`` on CPU; ``spec`` (a ``--synnav-variants`` item) changes one lever:
    ``""`` synnav's defaults, ``"single"`` one protein a batch, ``"N"`` a budget of N tokens; a
    prefix picks the numbers: ``"bf16"`` bf16 autocast over the fp32 weights, ``"bf16w"`` the
    encoder's weights cast to bf16, pooling and head in fp32 (what ``--precision bf16`` runs on a
    CPU with native bf16), ``"int8"`` the encoder's linear
    layers dynamically quantised to int8 (``torch.ao.quantization.quantize_dynamic``), each
    optionally followed by ``:N`` or ``:single`` (e.g. ``bf16w:2048``)."""

    MODES = ("bf16w", "bf16", "int8", "esmmodel", "mkl")

    def __init__(self, model: LocalizationModel, backbone, spec: str = "") -> None:
        self.backbone = backbone
        mode = next((m for m in self.MODES if spec.split(":")[0] == m), "")
        rest = spec.removeprefix(mode).removeprefix(":")
        self.precision = "bf16" if mode.startswith("bf16") else "fp32"
        self.weights_cast = mode == "bf16w"
        self.model = model if mode in ("", "bf16", "mkl") else _converted(model, mode)
        self.onednn = mode != "mkl"
        self.max_batch_size = 1 if rest == "single" else None
        self.max_tokens = int(rest) if rest.isdigit() else None

    def run(self, sequences: list[str], mode: str, threads: int) -> tuple[float, np.ndarray]:
        device = torch.device("cpu")
        # What `synnav predict` uses: the backbone's memory model (fixed budgets on CPU).
        limit = self.backbone.tokens(self.backbone.max_length)
        budget = hardware.plan_budget(device, hardware.memory_model(self.backbone), training=False,
                                      precision=self.precision, min_tokens=limit,
                                      requested=self.max_tokens)
        runtime = Runtime(device, self.precision, budget.max_tokens, self.max_batch_size,
                          weights_cast=self.weights_cast)  # fmt: skip
        saved = cpu_linear._ONEDNN_LINEAR
        if not self.onednn:
            cpu_linear._ONEDNN_LINEAR = None
        try:
            start = time.perf_counter()
            pooled = pooled_embeddings(self.model, self.backbone, sequences, runtime)
            return time.perf_counter() - start, pooled
        finally:
            cpu_linear._ONEDNN_LINEAR = saved


def _converted(model: LocalizationModel, mode: str) -> LocalizationModel:
    """A copy of ``model`` whose encoder computes in bf16 weights or int8 linear layers."""
    import copy
    import warnings

    copied = copy.deepcopy(model)
    if mode == "esmmodel":
        copied.encoder.packed = False
        return copied
    if mode == "bf16w":  # synnav's own cast, as scoring.load applies it
        cast_encoder(copied.encoder, Runtime(torch.device("cpu"), "bf16", 0, weights_cast=True))
        return copied
    with warnings.catch_warnings():  # torch.ao.quantization announces its removal
        warnings.simplefilter("ignore")
        copied.encoder = torch.ao.quantization.quantize_dynamic(
            copied.encoder, {torch.nn.Linear}, dtype=torch.qint8
        )
    return copied


# --- measurement ------------------------------------------------------------------------


def roofline(threads: int, size: int, seconds: float) -> dict:
    torch.set_num_threads(threads)
    out = {}
    for label, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
        torch.mm(a, b)
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            torch.mm(a, b)
            reps += 1
        out[f"mm_{label}_gflops"] = round(
            2.0 * size**3 * reps / (time.perf_counter() - start) / 1e9, 1
        )
    return out


def cpu_facts() -> dict:
    facts = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return facts
    for line in info.splitlines():
        if line.startswith("model name"):
            facts["cpu"] = line.split(":", 1)[1].strip()
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            facts["flags"] = sorted(
                flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
            )
            break
    return facts


def measure_model(name: str, sequences: list[str], threads: list[int], rounds: int,
                  budgets: list[str], peer_python: str | None, workdir: Path) -> dict:  # fmt: skip
    backbone_name, peer_kind = MODELS[name]
    backbone = get_backbone(backbone_name)
    torch.manual_seed(0)
    encoder = backbone.build_encoder(pretrained=False)
    model = LocalizationModel(encoder, backbone.embedding_dim, 6).eval()
    limit = backbone.max_length
    sequences = [s[:limit] for s in sequences]
    params, (layers, width) = matmul_params(encoder), shape_of(encoder)
    flop = sum(
        2.0 * params * (len(s) + 2) + 4.0 * layers * width * (len(s) + 2) ** 2 for s in sequences
    )

    if peer_kind == "esm":
        if peer_python is None:
            raise SystemExit(f"{name} needs the esm environment: run benchmarks/peer_venv.sh")
        peer = EsmPeer(encoder, peer_python, workdir)
    else:
        peer = TransformersPeer(encoder)
    variants = {f"{peer_kind}:single": (peer, "single"), f"{peer_kind}:batch8": (peer, "batch8"),
                "synnav": (Synnav(model, backbone), "")}  # fmt: skip
    for spec in budgets:
        variants[f"synnav:{spec}"] = (Synnav(model, backbone, spec), "")

    result = {"model": name, "backbone": backbone_name, "proteins": len(sequences),
              "residues": sum(map(len, sequences)), "lengths": sorted(map(len, sequences)),
              "forward_gflop": round(flop / 1e9, 2), "peer_attention": peer.attention,
              "synnav_attention": _synnav_attention(encoder), "by_threads": []}  # fmt: skip
    if isinstance(peer, EsmPeer):
        result.update(peer.versions)
    try:
        for t in threads:
            torch.set_num_threads(t)
            block = {"threads": t, "load_average_start": os.getloadavg()[0],
                     "roofline": roofline(t, 1024, 1.0)}  # fmt: skip
            for obj, mode in variants.values():  # warm-up: thread pools, allocator
                obj.run(sequences[:2], mode, t)
            seconds = {v: [] for v in variants}
            pooled = {}
            names = list(variants)
            for r in range(rounds):
                for k in range(len(names)):
                    v = names[(r + k) % len(names)]
                    obj, mode = variants[v]
                    spent, pooled[v] = obj.run(sequences, mode, t)
                    seconds[v].append(round(spent, 3))
            torch.set_num_threads(t)
            reference = pooled[f"{peer_kind}:single"]
            rows = []
            for v in names:
                total = sum(seconds[v])
                rate = flop * rounds / total
                rows.append({
                    "variant": v, "seconds_per_round": seconds[v],
                    "residues_per_s": round(result["residues"] * rounds / total, 1),
                    "gflops": round(rate / 1e9, 2),
                    "share_of_mm_fp32": round(rate / 1e9 / block["roofline"]["mm_fp32_gflops"], 3),
                    "max_abs_diff_vs_peer_single": float(np.abs(pooled[v] - reference).max()),
                    "min_cosine_vs_peer_single": _min_cosine(pooled[v], reference),
                })  # fmt: skip
            best_peer = max(r["residues_per_s"] for r in rows if r["variant"].startswith(peer_kind))
            for row in rows:
                row["vs_best_peer"] = round(row["residues_per_s"] / best_peer, 2)
                row["same_numbers"] = row["max_abs_diff_vs_peer_single"] <= SAME_NUMBERS
            block.update(rows=rows, load_average_end=os.getloadavg()[0])
            result["by_threads"].append(block)
            print(f"{name}, {t} thread(s), load {block['load_average_start']:.1f}"
                  f"->{block['load_average_end']:.1f}: " + ", ".join(
                      f"{r['variant']} {r['residues_per_s']:.0f} res/s" for r in rows),
                  file=sys.stderr, flush=True)  # fmt: skip
    finally:
        if isinstance(peer, EsmPeer):
            peer.close()
    return result


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The least cosine similarity between a protein's two embeddings (1.0: same direction)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min())


def _synnav_attention(encoder) -> str:
    if hasattr(encoder, "resolved_attention_backend"):
        path = "packed, " + encoder.resolved_attention_backend(torch.device("cpu"), torch.float32)
        onednn = getattr(encoder, "onednn_linear", False) and cpu_linear.onednn_used()
        return path + (", oneDNN linear in fp32" if onednn else "")
    if getattr(encoder, "packed", False):
        linear = "oneDNN" if cpu_linear.onednn_used() else "MKL"
        return f"packed (esm2_packed: one SDPA per protein, {linear} linear in fp32)"
    return "transformers EsmModel (padded)"


# --- summary ----------------------------------------------------------------------------


def markdown(results: dict) -> str:
    env = results["environment"]
    head = (
        f"{env['date']}, {env['cpu']} ({env['cpu_count']} cores), torch {env['torch']}, "
        f"{results['proteins']} proteins ({results['residues']:,} residues, longest "
        f"{max(results['lengths'])}), {results['rounds']} interleaved rounds. {results['note']}"
    )
    lines = [
        head,
        "",
        (
            "| backbone, threads | load | peer one a call | peer, sorted batches of 8 | synnav "
            "(defaults) | synnav / best peer | other synnav variants | best GFLOP/s (share of fp32 "
            "mm) | largest diff |"
        ),
        "|---|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for model in results["models"]:
        for block in model["by_threads"]:
            rows = {r["variant"]: r for r in block["rows"]}
            peer = next(
                v.split(":")[0] for v in rows if v.endswith(":single") and v != "synnav:single"
            )
            others = ", ".join(f"`{v[7:]}` {r['residues_per_s']:,.0f} ({r['vs_best_peer']:.2f}x"
                               + ("" if r["same_numbers"] else
                                  f", diff {r['max_abs_diff_vs_peer_single']:.1e}") + ")"
                               for v, r in rows.items() if v.startswith("synnav:"))  # fmt: skip
            best = max(block["rows"], key=lambda r: r["gflops"])
            worst = max(r["max_abs_diff_vs_peer_single"] for r in block["rows"])
            lines.append(
                f"| {model['model']}, {block['threads']} | {block['load_average_start']:.1f} | "
                f"{rows[peer + ':single']['residues_per_s']:,.0f} | "
                f"{rows[peer + ':batch8']['residues_per_s']:,.0f} | "
                f"{rows['synnav']['residues_per_s']:,.0f} | "
                f"**{rows['synnav']['vs_best_peer']:.2f}x** | "
                f"{others or '-'} | {best['gflops']:.1f} ({best['share_of_mm_fp32']:.0%} of "
                f"{block['roofline']['mm_fp32_gflops']:.0f}) | {worst:.1e} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="esm2-8m,esmc-300m", help=", ".join(MODELS))
    parser.add_argument("--proteins", type=int, default=12)
    parser.add_argument("--median-length", type=int, default=300)
    parser.add_argument("--max-length", type=int, default=1000)
    parser.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--synnav-variants",
        default="single,2048,4096",
        help="extra synnav variants (see Synnav): single, a token budget N, bf16, bf16:N, ...",
    )
    parser.add_argument(
        "--peer-python",
        help="python of the esm environment (default: build or reuse it with peer_venv.sh)",
    )
    parser.add_argument(
        "--note", default="", help="written into the results (e.g. the machine's load)"
    )
    parser.add_argument("--out", type=Path, help="results file (default: benchmarks/results/...)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--markdown", type=Path, metavar="RESULTS", help="print the table of a results file"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0

    models = args.models.split(",")
    peer_python = args.peer_python
    if peer_python is None and any(MODELS[m][1] == "esm" for m in models):
        built = subprocess.run(["bash", str(HERE / "peer_venv.sh")], capture_output=True, text=True,
                               check=True)  # fmt: skip
        peer_python = built.stdout.strip().splitlines()[-1]
    rng = np.random.default_rng(args.seed)
    drawn = rng.lognormal(np.log(args.median_length), 0.6, args.proteins)
    lengths = [int(x) for x in np.clip(drawn, 30, args.max_length)]
    sequences = random_proteins(lengths, args.seed)
    import transformers

    date = dt.datetime.now(dt.timezone.utc)
    results = {
        "environment": {"date": date.isoformat(timespec="seconds"), **cpu_facts(),
                        "torch": torch.__version__, "transformers": transformers.__version__,
                        "python": platform.python_version(), "load_average_start": os.getloadavg(),
                        "argv": sys.argv},
        "note": args.note, "proteins": len(sequences), "residues": sum(lengths),
        "lengths": sorted(lengths), "rounds": args.rounds, "models": [],
    }  # fmt: skip
    threads = [int(t) for t in args.threads.split(",")]
    budgets = [b for b in args.synnav_variants.split(",") if b]
    out = args.out or HERE / "results" / f"{date:%Y-%m-%d}-{platform.node() or 'host'}-peers.json"
    with tempfile.TemporaryDirectory() as workdir:
        for name in models:
            results["models"].append(
                measure_model(
                    name, sequences, threads, args.rounds, budgets, peer_python, Path(workdir)
                )
            )
            results["environment"]["load_average_end"] = os.getloadavg()
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1) + "\n")
    print(markdown(results))
    print(f"\nwritten to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
