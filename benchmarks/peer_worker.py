"""The official EvolutionaryScale ``esm`` package as a peer of synnav, driven by benchmarks/peers.py.

Runs inside the environment benchmarks/peer_venv.sh builds (esm 3.2.1.post1, which cannot share
an environment with synnav's transformers). Imports only torch and esm. Reads one JSON command a
line on stdin and answers one JSON line on stdout:

``{"cmd": "load", "d_model", "n_heads", "n_layers", "weights": path}``
    build ``esm.models.esmc.ESMC`` (no flash attention: CPU) and load synnav's random weights;
    the masked-LM head, which embeddings never reach, keeps its own initialisation
``{"cmd": "run", "mode": "single" | "batch8", "sequences": [...], "threads": n}``
    mean-pooled residue embeddings the way a user of the package gets them: the official
    tokenizer, ``model(sequence_tokens=...)``, its ``embeddings``; "single" is one protein a call,
    "batch8" length-sorted batches of 8 padded with the pad token (the model masks padding itself).
    Answers the seconds spent (tokenizing and forwards) and the pooled vectors in input order.
"""

from __future__ import annotations

import json
import sys
import time

import torch


def main() -> int:
    from esm.models.esmc import ESMC
    from esm.tokenization import get_esmc_model_tokenizers

    model = None
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "load":
            torch.manual_seed(0)
            model = ESMC(
                d_model=request["d_model"],
                n_heads=request["n_heads"],
                n_layers=request["n_layers"],
                tokenizer=get_esmc_model_tokenizers(),
                use_flash_attn=False,
            )
            state = torch.load(request["weights"], weights_only=True)
            missing, unexpected = model.load_state_dict(state, strict=False)
            model.eval()
            reply = {
                "missing": [k for k in missing if not k.startswith("sequence_head.")],
                "unexpected": list(unexpected),
                "esm_version": _version("esm"),
                "torch": torch.__version__,
            }
        elif request["cmd"] == "run":
            torch.set_num_threads(request["threads"])
            seconds, pooled = embed(model, request["sequences"], request["mode"])
            reply = {"seconds": seconds, "pooled": pooled, "threads": torch.get_num_threads()}
        else:
            reply = {"error": f"unknown command {request['cmd']!r}"}
        print(json.dumps(reply), flush=True)
    return 0


@torch.inference_mode()
def embed(model, sequences: list[str], mode: str) -> tuple[float, list[list[float]]]:
    size = 1 if mode == "single" else 8
    order = list(range(len(sequences)))
    if mode != "single":
        order.sort(key=lambda i: -len(sequences[i]))
    pooled: list = [None] * len(sequences)
    start = time.perf_counter()
    for at in range(0, len(order), size):
        index = order[at : at + size]
        tokens = model._tokenize([sequences[i] for i in index])  # pads with the pad token
        embeddings = model(sequence_tokens=tokens).embeddings.float()
        for row, i in enumerate(index):
            n = len(sequences[i])
            pooled[i] = embeddings[row, 1 : n + 1].mean(dim=0)  # residues: after <cls>
    seconds = time.perf_counter() - start
    return seconds, [p.tolist() for p in pooled]


def _version(name: str) -> str:
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    sys.exit(main())
