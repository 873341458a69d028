"""Hugging Face Hub caches for tests, laid out byte for byte as huggingface_hub lays them out.

``<hub>/models--<org>--<name>/``:
    ``blobs/<sha256>`` (LFS files: weights) or ``blobs/<git sha1>`` (small files),
    ``snapshots/<commit>/<path>`` -> relative symlink to ``../../blobs/<hash>`` (deeper paths get
    more ``..``), ``refs/main`` holding the commit hash (no newline).

Loading such a cache offline runs the same resolution, integrity checks and state-dict loading
as a real download. Helpers:

- :func:`cache_repo` writes any files into such a cache;
- :func:`tiny_esm2_files` / :func:`tiny_esmc_checkpoint` make tiny random weights in the
  published file formats; :func:`cache_tiny_weights` puts them where a registered backbone looks;
- fixtures :func:`no_network` (any TCP/UDP connection or DNS lookup fails the test) and
  :func:`tiny_hub` (temporary cache, offline, ``SYNNAV_TEST_TINY_BACKBONES=1``, no network).

Use them from a test module with ``from hub_fixture import tiny_hub, no_network``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import torch

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """git's object id for a file: what the hub uses as etag (and blob name) for non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _etag(data: bytes | Path, *, lfs: bool) -> str:
    if not isinstance(data, Path):
        return sha256_hex(data) if lfs else git_blob_sha1(data)
    digest = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % data.stat().st_size)
    with open(data, "rb") as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def repo_folder(hub_dir: Path, repo_id: str) -> Path:
    return Path(hub_dir) / ("models--" + repo_id.replace("/", "--"))


def cache_repo(
    hub_dir: Path,
    repo_id: str,
    files: Mapping[str, bytes | Path],
    *,
    commit: str | None = None,
    ref: str = "main",
    lfs: Iterable[str] | None = None,
) -> Path:
    """Write ``files`` (repo path -> content) into a hub cache; return the snapshot directory.

    A content given as a ``Path`` is moved into the cache (hashed as a stream, never read whole:
    for full-size checkpoints).

    ``commit`` defaults to one derived from ``repo_id``, so calls for the same repository add to
    the same snapshot. ``lfs`` names the files stored as LFS (blob named by sha256); by default
    those with a weights suffix, as on the hub.
    """
    root = repo_folder(hub_dir, repo_id)
    commit = commit or hashlib.sha1(f"commit of {repo_id}".encode()).hexdigest()
    lfs_files = set(lfs) if lfs is not None else {p for p in files if p.endswith(LFS_SUFFIXES)}
    snapshot = root / "snapshots" / commit
    for repo_path, data in files.items():
        etag = _etag(data, lfs=repo_path in lfs_files)
        blob = root / "blobs" / etag
        blob.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Path):
            shutil.move(data, blob)
        else:
            blob.write_bytes(data)
        link = snapshot / repo_path
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        # Relative, exactly as huggingface_hub's _create_symlink writes them.
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snapshot


def blob_of(snapshot_file: Path) -> Path:
    """The blob a snapshot entry points to (to damage it in a test)."""
    return Path(os.path.realpath(snapshot_file))


# --- tiny weights in the published formats --------------------------------------------------------


def tiny_esm2_files(seed: int = 0) -> dict[str, bytes]:
    """``config.json`` and ``model.safetensors`` of a random 2-layer ESM2 (the tiny architecture).

    Keys follow the published ``facebook/esm2_*`` checkpoints: the masked-LM model under
    ``esm.``, the ``lm_head.*`` head, rotary ``inv_freq`` stored per layer, and the output
    projection tied to the embeddings (not stored).
    """
    from safetensors.torch import save
    from transformers import EsmForMaskedLM

    from synnav_cli.backbones.esm2 import ESM2_TINY

    config = ESM2_TINY.config()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = EsmForMaskedLM(config)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.decoder.weight":
            continue
        if key == "esm.rotary_embeddings.inv_freq":
            for layer in range(config.num_hidden_layers):
                name = f"esm.encoder.layer.{layer}.attention.self.rotary_embeddings.inv_freq"
                tensors[name] = value.clone()
            continue
        tensors[key] = value.detach().clone().contiguous()
    published = {
        "architectures": ["EsmForMaskedLM"],
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": None,
        "emb_layer_norm_before": False,
        "esmfold_config": None,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": ESM2_TINY.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": ESM2_TINY.intermediate_size,
        "is_folding_model": False,
        "layer_norm_eps": 1e-05,
        "mask_token_id": 32,
        "max_position_embeddings": 1026,
        "model_type": "esm",
        "num_attention_heads": ESM2_TINY.num_attention_heads,
        "num_hidden_layers": ESM2_TINY.num_hidden_layers,
        "pad_token_id": 1,
        "position_embedding_type": "rotary",
        "token_dropout": True,
        "torch_dtype": "float32",
        "transformers_version": "4.25.0.dev0",
        "use_cache": True,
        "vocab_list": None,
        "vocab_size": 33,
    }
    return {
        "config.json": (json.dumps(published, indent=2) + "\n").encode(),
        "model.safetensors": save(tensors, metadata={"format": "pt"}),
    }


def official_esmc_shapes(d_model: int, n_layers: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of EvolutionaryScale's ``esmc_*_v0.pth`` state dicts, in file order.

    Written from the published key list, not from synnav's module tree, so comparing the two
    tests that they agree. Includes the masked-LM ``sequence_head``, which loading must drop.
    """
    d = d_model
    hidden = (8 * d // 3 + 255) // 256 * 256  # SwiGLU width: 8/3 d, up to a multiple of 256
    shapes: dict[str, tuple[int, ...]] = {"embed.weight": (64, d)}
    for i in range(n_layers):
        block = f"transformer.blocks.{i}."
        shapes |= {
            block + "attn.layernorm_qkv.0.weight": (d,),
            block + "attn.layernorm_qkv.0.bias": (d,),
            block + "attn.layernorm_qkv.1.weight": (3 * d, d),
            block + "attn.out_proj.weight": (d, d),
            block + "attn.q_ln.weight": (d,),
            block + "attn.k_ln.weight": (d,),
            block + "ffn.0.weight": (d,),
            block + "ffn.0.bias": (d,),
            block + "ffn.1.weight": (2 * hidden, d),
            block + "ffn.3.weight": (d, hidden),
        }
    shapes |= {
        "transformer.norm.weight": (d,),
        "sequence_head.0.weight": (d, d),
        "sequence_head.0.bias": (d,),
        "sequence_head.2.weight": (d,),
        "sequence_head.2.bias": (d,),
        "sequence_head.3.weight": (64, d),
        "sequence_head.3.bias": (64,),
    }
    return shapes


def official_esmc_state_dict(
    d_model: int, n_layers: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """A random state dict laid out as :func:`official_esmc_shapes` says.

    LayerNorm scales are drawn around 1 and everything else around 0, so that every parameter
    changes the output.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_esmc_shapes(d_model, n_layers).items():
        values = torch.randn(*shape, generator=generator)
        is_norm_scale = len(shape) == 1 and name.endswith(".weight")
        state[name] = (1 + 0.1 * values if is_norm_scale else values * 0.02).to(dtype)
    return state


def tiny_esmc_checkpoint(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> bytes:
    """A ``.pth`` (torch.save zip format, as published) of a random ``ESMC_TINY``."""
    from synnav_cli.backbones.esmc_model import ESMC_TINY

    buffer = io.BytesIO()
    state = official_esmc_state_dict(ESMC_TINY.d_model, ESMC_TINY.n_layers, seed=seed, dtype=dtype)
    torch.save(state, buffer)
    return buffer.getvalue()


def cache_tiny_weights(backbone_id: str, hub_dir: Path | None = None, *, seed: int = 0) -> Path:
    """Put tiny weights where a registered ESM2 or ESM C backbone looks; return the snapshot.

    ``hub_dir`` defaults to the synnav hub cache of the current environment. The backbone
    builds a tiny architecture only with ``SYNNAV_TEST_TINY_BACKBONES=1`` (the ``tiny_hub``
    fixture sets it).
    """
    from synnav_cli import paths
    from synnav_cli.backbones.esm2 import ESM2
    from synnav_cli.backbones.esmc import ESMC
    from synnav_cli.plugins import get_backbone

    backbone = get_backbone(backbone_id)
    hub_dir = Path(hub_dir) if hub_dir is not None else paths.hub_cache_dir()
    if isinstance(backbone, ESM2):
        files = tiny_esm2_files(seed)
    elif isinstance(backbone, ESMC):
        files = {backbone.weights_file: tiny_esmc_checkpoint(seed=seed)}
    else:
        raise ValueError(f"no tiny weights for backbone {backbone_id!r}")
    return cache_repo(hub_dir, backbone.weights_repo, files)


# --- fixtures -----------------------------------------------------------------------------------


class NetworkAccessInTest(RuntimeError):
    pass


@pytest.fixture
def no_network(monkeypatch):
    """Fail loudly on any attempt to open an internet connection or resolve a name."""

    def refuse(*args, **kwargs):
        raise NetworkAccessInTest(f"a test tried to reach the network: {args!r}")

    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def guarded(real):
        def connect(self, address, *args):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refuse(address)
            return real(self, address, *args)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(real_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(real_connect_ex))
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def tiny_hub(tmp_path, monkeypatch, no_network) -> Path:
    """A fresh synnav cache, offline, tiny built-in backbones; returns its hub directory."""
    monkeypatch.setenv("SYNNAV_CACHE_DIR", str(tmp_path / "synnav-cache"))
    monkeypatch.setenv("SYNNAV_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SYNNAV_TEST_TINY_BACKBONES", "1")
    # Keep the user's own Hugging Face home (token, default cache) out of the picture.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = tmp_path / "synnav-cache" / "hub"
    hub.mkdir(parents=True)
    return hub
