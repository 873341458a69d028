"""What the weights cache holds, and deleting it: only repositories listed, never through a link."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synnav_cli import paths
from synnav_cli.errors import UserError

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class CachedRepo:
    """One repository in the synnav cache."""

    repo_id: str
    path: Path
    size_on_disk: int  # bytes of its blobs, partial downloads included, shared blobs once
    files: tuple[str, ...]  # paths inside the repository, over every cached revision
    revisions: tuple[str, ...]  # cached commit hashes
    backbones: tuple[str, ...]  # registered backbones whose weights these are

    def to_json(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "path": str(self.path),
            "size_on_disk": self.size_on_disk,
            "files": list(self.files),
            "revisions": list(self.revisions),
            "backbones": list(self.backbones),
        }


def cached_repos(backbones: Mapping[str, Sequence[str]] | None = None) -> list[CachedRepo]:
    """Every model repository in the synnav cache, sorted by id.

    ``backbones`` maps lower-cased repository ids to the backbone ids that use them (the
    caller asks the plugin registry; this floor does not reach up to it).
    """
    root = paths.hub_dir()
    if not root.is_dir():
        return []
    backbones = backbones or {}
    repos = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or not entry.name.startswith("models--"):
            continue
        repo_id = entry.name.removeprefix("models--").replace("--", "/")
        repos.append(_describe(repo_id, entry, tuple(backbones.get(repo_id.lower(), ()))))
    return repos


def _describe(repo_id: str, path: Path, backbones: tuple[str, ...]) -> CachedRepo:
    size = 0
    seen: set[str] = set()
    blobs = path / "blobs"
    if blobs.is_dir():
        for blob in blobs.iterdir():
            # Newer huggingface_hub versions link blobs into a store shared across repos.
            real = os.path.realpath(blob)
            if real in seen or not os.path.isfile(real):
                continue
            seen.add(real)
            size += os.path.getsize(real)
    files: set[str] = set()
    revisions: list[str] = []
    snapshots = path / "snapshots"
    if snapshots.is_dir():
        for snapshot in sorted(snapshots.iterdir()):
            if not snapshot.is_dir():
                continue
            revisions.append(snapshot.name)
            for file in snapshot.rglob("*"):
                if not file.is_dir():
                    files.add(file.relative_to(snapshot).as_posix())
    return CachedRepo(repo_id, path, size, tuple(sorted(files)), tuple(revisions), backbones)


def clear(repo_id: str | None = None) -> list[CachedRepo]:
    """Delete one repository's cached files, or (``None``) every cached model repository.

    Only the repositories :func:`cached_repos` lists are deleted, each inside the cache and never
    through a symbolic link (a linked entry loses its link, not its target); anything else in the
    cache folder (datasets, a user's own files) stays. Returns what was deleted.
    """
    listed = cached_repos()
    removed = [r for r in listed if repo_id is None or r.repo_id.lower() == repo_id.lower()]
    for repo in removed:
        _delete_with_hub(repo.repo_id, repo.revisions)
        # What the hub's own deletion leaves behind: partial downloads, a repo folder without
        # snapshots, download locks.
        _remove_inside(repo.path, paths.hub_dir())
        locks = paths.hub_dir() / ".locks"
        if locks.is_dir() and not locks.is_symlink():
            _remove_inside(locks / repo.path.name, locks)
    if repo_id is None:
        _clear_stamps()
    return removed


def _remove_inside(path: Path, root: Path) -> None:
    """Remove ``path`` (a folder or a link) if it sits directly in ``root``; never follow a link."""
    if Path(os.path.realpath(path.parent)) != Path(os.path.realpath(root)):
        raise UserError(f"not deleting {path}: it is outside the cache {root}")
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _clear_stamps() -> None:
    """Remove the integrity stamps synnav wrote (files named by a hex digest), nothing else."""
    stamps = paths.verified_dir()
    if stamps.is_symlink() or not stamps.is_dir():
        return
    for stamp in stamps.iterdir():
        if (
            stamp.is_file()
            and not stamp.is_symlink()
            and all(c in "0123456789abcdef" for c in stamp.name)
        ):
            stamp.unlink()


def _delete_with_hub(repo_id: str, revisions: Sequence[str]) -> None:
    """Delete through huggingface_hub, which also frees blobs it shares between repositories."""
    if not revisions:
        return
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(paths.hub_dir())
        known = {
            revision.commit_hash
            for repo in info.repos
            if repo.repo_id == repo_id and repo.repo_type == "model"
            for revision in repo.revisions
        }
        if known:
            info.delete_revisions(*sorted(known)).execute()
    except Exception:  # noqa: BLE001 - the caller removes the folder itself in any case
        pass
