"""Hugging Face Hub caches with random weights, laid out byte for byte as huggingface_hub does.

``<hub>/models--<org>--<name>/``:
    ``blobs/<sha256>`` (LFS files: weights) or ``blobs/<git sha1>`` (small files),
    ``snapshots/<commit>/<path>`` -> relative symlink to ``../../blobs/<hash>`` (deeper paths get
    more ``..``), ``refs/main`` holding the commit hash (no newline).

Loading such a cache offline runs the same resolution, integrity checks and state-dict loading
as a real download. No pytest here: the tests use this module through ``hub_fixture`` (which adds
the fixtures), and ``benchmarks/device/`` uses it to lay out full-size random weights on a GPU
machine that has no network.

- :func:`cache_repo` writes any files into such a cache;
- :func:`esm2_files` / :func:`esmc_checkpoint` make random weights in the published file formats
  for any size (:func:`tiny_esm2_files` / :func:`tiny_esmc_checkpoint`: the tiny ones);
- :func:`cache_random_weights` puts them where a registered backbone looks, in the architecture
  the backbone has now (tiny under ``SYNNAV_TEST_TINY_BACKBONES=1``, published otherwise);
  :func:`cache_tiny_weights` always the tiny one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

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


# --- random weights in the published formats ------------------------------------------------------


def esm2_files(architecture=None, seed: int = 0) -> dict[str, bytes]:
    """``config.json`` and ``model.safetensors`` of a random ESM2 of ``architecture`` (an
    ``ESM2Architecture``; default: the tiny one, 2 layers of width 64).

    Keys follow the published ``facebook/esm2_*`` checkpoints: the masked-LM model under
    ``esm.``, the ``lm_head.*`` head, rotary ``inv_freq`` stored per layer, and the output
    projection tied to the embeddings (not stored).
    """
    from safetensors.torch import save
    from transformers import EsmForMaskedLM

    from synnav_cli.backbones.esm2 import ESM2_TINY

    shape = architecture or ESM2_TINY
    config = shape.config()
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
        "hidden_size": shape.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": shape.intermediate_size,
        "is_folding_model": False,
        "layer_norm_eps": 1e-05,
        "mask_token_id": 32,
        "max_position_embeddings": 1026,
        "model_type": "esm",
        "num_attention_heads": shape.num_attention_heads,
        "num_hidden_layers": shape.num_hidden_layers,
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


def tiny_esm2_files(seed: int = 0) -> dict[str, bytes]:
    """:func:`esm2_files` of the tiny architecture."""
    return esm2_files(None, seed)


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
    d_model: int,
    n_layers: int,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> dict[str, torch.Tensor]:
    """A random state dict laid out as :func:`official_esmc_shapes` says, on the CPU.

    LayerNorm scales are drawn around 1 and everything else around 0, so that every parameter
    changes the output. ``device`` draws them there (``"cuda"``: seconds faster at 600M; other
    values than on the CPU for the same seed).
    """
    generator = torch.Generator(device).manual_seed(seed)
    state = {}
    for name, shape in official_esmc_shapes(d_model, n_layers).items():
        values = torch.randn(*shape, generator=generator, device=device)
        is_norm_scale = len(shape) == 1 and name.endswith(".weight")
        state[name] = (1 + 0.1 * values if is_norm_scale else values * 0.02).to(dtype).cpu()
    return state


def esmc_checkpoint(
    config=None,
    path: Path | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
) -> bytes | Path:
    """A ``.pth`` (torch.save zip format, as published) of a random ESM C of ``config`` (an
    ``ESMCConfig``; default ``ESMC_TINY``): its bytes, or, given ``path``, written there (for
    full-size checkpoints: 1.15 GB at 600M in bf16) and ``path`` returned."""
    from synnav_cli.backbones.esmc_model import ESMC_TINY

    config = config or ESMC_TINY
    state = official_esmc_state_dict(
        config.d_model, config.n_layers, seed=seed, dtype=dtype, device=device
    )
    if path is None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()
    torch.save(state, path)
    return Path(path)


def tiny_esmc_checkpoint(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> bytes:
    """The bytes of :func:`esmc_checkpoint` for ``ESMC_TINY``."""
    return esmc_checkpoint(None, seed=seed, dtype=dtype)


def _backbone_files(backbone_id: str, tiny: bool, seed: int, dtype, device: str, scratch: Path):
    from synnav_cli.backbones.esm2 import ESM2
    from synnav_cli.backbones.esmc import ESMC
    from synnav_cli.plugins import get_backbone

    backbone = get_backbone(backbone_id)
    if isinstance(backbone, ESM2):
        return backbone, esm2_files(None if tiny else backbone.architecture, seed)
    if isinstance(backbone, ESMC):
        if tiny:
            return backbone, {backbone.weights_file: tiny_esmc_checkpoint(seed=seed)}
        path = scratch / "weights.pth"
        esmc_checkpoint(backbone.config, path, seed=seed, dtype=dtype, device=device)
        return backbone, {backbone.weights_file: path}
    raise ValueError(f"no random weights for backbone {backbone_id!r}")


def _cache(
    backbone_id: str, hub_dir: Path | None, tiny: bool, seed: int, dtype, device: str = "cpu"
) -> Path:
    from synnav_cli import paths

    hub_dir = Path(hub_dir) if hub_dir is not None else paths.hub_cache_dir()
    hub_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=hub_dir) as scratch:  # same filesystem: moved, not copied
        backbone, files = _backbone_files(backbone_id, tiny, seed, dtype, device, Path(scratch))
        return cache_repo(hub_dir, backbone.weights_repo, files)


def cache_tiny_weights(backbone_id: str, hub_dir: Path | None = None, *, seed: int = 0) -> Path:
    """Put tiny weights where a registered ESM2 or ESM C backbone looks; return the snapshot.

    ``hub_dir`` defaults to the synnav hub cache of the current environment. The backbone
    builds a tiny architecture only with ``SYNNAV_TEST_TINY_BACKBONES=1`` (the ``tiny_hub``
    fixture sets it).
    """
    return _cache(backbone_id, hub_dir, True, seed, torch.float32)


def cache_random_weights(
    backbone_id: str,
    hub_dir: Path | None = None,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.bfloat16,
    device: str = "cpu",
) -> Path:
    """Random weights of the architecture the backbone has now, where it looks; the snapshot.

    That is the tiny architecture under ``SYNNAV_TEST_TINY_BACKBONES=1``, the published one
    otherwise (ESM C 600M: 575M parameters, ~1.15 GB in bf16, ~10 s to draw, save and hash).
    ``dtype`` is the ESM C checkpoint's (loading turns it into fp32); ESM2 files are fp32, as
    published. ``device`` draws the ESM C weights there (see :func:`official_esmc_state_dict`).
    """
    from synnav_cli.weights import hub

    return _cache(backbone_id, hub_dir, hub.tiny_backbones(), seed, dtype, device)
