"""Cached weight files checked against the hash the hub cache records, before their first use.

Hashing a large checkpoint takes a second or two, so a good check is remembered (size and
modification time) under ``paths.verified_dir()``; any change to the file voids it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from synnav_cli import paths
from synnav_cli.errors import UserError, one_line, quoted

if TYPE_CHECKING:
    import torch


_HASH_CHUNK = 16 * 1024 * 1024


def _expected_hash(path: Path, repo_id: str, filename: str) -> tuple[str, str] | None:
    """(algorithm, hex digest) the hub cache recorded for a snapshot file, if it recorded one.

    A snapshot entry is a symlink to ``blobs/<etag>``: the etag is the file's sha256 for LFS
    files (all weights) and git's blob sha1 for small ones. Where symlinks are unavailable the hub
    copies files instead; then the commit's tree listing (``trees/<commit>.json``), which newer
    huggingface_hub versions write, is the only record.
    """
    if path.is_symlink():
        name = os.path.basename(os.readlink(path))
        if len(name) == 64 and _is_hex(name):
            return "sha256", name
        if len(name) == 40 and _is_hex(name):
            return "git-sha1", name
        return None
    try:
        commit = path.relative_to(paths.repo_dir(repo_id) / "snapshots").parts[0]
        listing = json.loads((paths.repo_dir(repo_id) / "trees" / f"{commit}.json").read_text())
        entry = listing["files"][filename]
    except (ValueError, IndexError, OSError, KeyError, TypeError):
        return None
    if entry.get("lfs_sha256"):
        return "sha256", entry["lfs_sha256"]
    if entry.get("blob_id"):
        return "git-sha1", entry["blob_id"]
    return None


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _digest(path: Path, algorithm: str) -> str:
    size = path.stat().st_size
    if algorithm == "sha256":
        digest = hashlib.sha256()
    else:
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % size)
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, *, repo_id: str, filename: str) -> None:
    """Raise ``UserError`` naming the file when a cached file does not match its recorded hash.

    Hashing a large checkpoint takes a second or two, so a stamp (size, mtime) under
    ``$SYNNAV_CACHE_DIR/verified`` remembers a good check; any change to the file voids it.
    Files the hub cache recorded no hash for are left to the loaders' own checks.
    """
    expected = _expected_hash(path, repo_id, filename)
    if expected is None:
        return
    algorithm, digest = expected
    try:
        stat = path.stat()
    except OSError as error:
        raise damaged_file_error(repo_id, filename, path, error) from error
    stamp_file = paths.verified_dir() / digest
    stamp = f"{stat.st_size} {stat.st_mtime_ns}"
    try:
        if stamp_file.read_text() == stamp:
            return
    except OSError:
        pass
    actual = _digest(path, algorithm)
    if actual != digest:
        raise UserError(
            f"cached file {filename} of {repo_id} is damaged ({stat.st_size} bytes, "
            f"{algorithm} {actual[:12]}… where {digest[:12]}… was expected; truncated "
            f"or overwritten): run `synnav cache clear {repo_id}` and download it again ({path})"
        )
    try:
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        stamp_file.write_text(stamp)
    except OSError:
        pass  # a read-only cache is verified on every load instead


def damaged_file_error(repo_id: str, filename: str, path: Path, error: BaseException) -> UserError:
    """The ``UserError`` for a cached weights file that a loader could not read."""
    return UserError(
        f"could not load cached file {filename} of {repo_id} ({one_line(error)}); it is probably "
        f"damaged or incomplete: run `synnav cache clear {repo_id}` and download it again ({path})"
    )


def load_torch_state_dict(path: Path, *, repo_id: str, filename: str) -> dict[str, torch.Tensor]:
    """Load a ``.pth`` state dict safely: CPU, ``weights_only`` (no code runs), memory-mapped.

    Anything unreadable, or anything that is not a flat mapping of names to tensors, becomes a
    ``UserError`` naming the file instead of half-loaded garbage.
    """
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any failure here means an unusable file
        raise damaged_file_error(repo_id, filename, path, error) from error
    if not isinstance(state, Mapping) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise UserError(
            f"cached file {filename} of {repo_id} is not a state dict (a mapping of names to "
            f"tensors): run `synnav cache clear {repo_id}` and download it again ({path})"
        )
    return dict(state)


def tensor_mismatch(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> str | None:
    """The tensors of ``state`` whose dtype is not the one the module declares (``expected``: a
    freshly built module's ``state_dict()``), said in a few words, or None.

    ``load_state_dict`` copies an int32 tensor into a float parameter without a word, and the
    model then scores every protein alike. Shapes, and names the module lacks or that ``state``
    lacks, are left to its strict loading, which refuses them (a shape that differs means weights
    of another model, not a converted file).
    """
    wrong = [
        f"tensor {quoted(key)} is {_kind(value)} where the model has {_kind(expected[key])}"
        for key, value in state.items()
        if key in expected and value.dtype != expected[key].dtype
    ]
    if not wrong:
        return None
    return wrong[0] + (f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else "")


def _kind(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"
