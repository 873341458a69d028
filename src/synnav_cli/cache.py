"""The weights cache: downloads from the Hugging Face Hub, offline use, integrity checks, listing.

Weights go to ``paths.hub_cache_dir()`` (``$SYNNAV_CACHE_DIR/hub``, else the platform cache dir),
in huggingface_hub's own layout (``models--<org>--<name>/{blobs,snapshots,refs}``), never to the
default Hugging Face cache. A login made with ``hf auth login`` (or ``HF_TOKEN``) is still used,
because only the cache location is redirected.

Offline mode: nothing touches the network when ``offline=True`` is passed, or the environment
sets ``SYNNAV_OFFLINE=1`` or Hugging Face's own ``HF_HUB_OFFLINE=1`` (``TRANSFORMERS_OFFLINE=1``
counts too). Both variables are read at call time, not import time. Weights must then already be
in the cache; a clear :class:`~synnav_cli.errors.UserError` says which repository is missing.

Every failure a user can act on (offline and not cached, gated repository, bad token, network
down, a damaged file) is raised as a one-line ``UserError``. Files are checked against the hash
the hub cache records for them (the blob name: sha256 for LFS files, git's sha1 for the rest)
before their first use, and again whenever their size or modification time changes.

No click here: ``synnav_cli.cache_cli`` is the command-line face of this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synnav_cli import paths
from synnav_cli.errors import UserError

if TYPE_CHECKING:
    import torch

OFFLINE_ENV = "SYNNAV_OFFLINE"
# Architecture switch for tests and plugin authors; see tiny_backbones().
TINY_ENV = "SYNNAV_TEST_TINY_BACKBONES"
HUB_URL = "https://huggingface.co"

_HF_OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
# Exceptions raised by the HTTP stacks huggingface_hub has used (requests before 1.0, httpx
# after) are network failures; matching on the module keeps this independent of the version.
_NETWORK_MODULES = {"requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2", "ssl"}
_HASH_CHUNK = 16 * 1024 * 1024

_announced: set[str] = set()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def offline_mode(offline: bool = False) -> bool:
    """Whether to stay off the network: ``offline``, ``SYNNAV_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``."""
    return offline or _env_true(OFFLINE_ENV) or any(_env_true(name) for name in _HF_OFFLINE_ENVS)


def _offline_reason(offline: bool) -> str:
    if offline:
        return "offline was requested"
    for name in (OFFLINE_ENV, *_HF_OFFLINE_ENVS):
        if _env_true(name):
            return f"{name}={os.environ[name].strip()}"
    return "offline"


def tiny_backbones() -> bool:
    """Whether ``SYNNAV_TEST_TINY_BACKBONES=1`` asks the built-in backbones for tiny architectures.

    It exists for tests and plugin authors: each built-in backbone then builds a tiny model of
    the same architecture (a few layers, width 64) and expects tiny weights at the very same
    repository and file in the cache, loaded by the very same code as the full ones. Backbones
    read it whenever they need their architecture (never at import or registration), so
    ``monkeypatch.setenv`` in a test is enough. Never set it for real work.
    """
    return _env_true(TINY_ENV)


def model_page(repo_id: str) -> str:
    return f"{HUB_URL}/{repo_id}"


def hub_dir() -> Path:
    """The hub-layout cache directory (``$SYNNAV_CACHE_DIR/hub``), symlinks resolved as the hub does."""
    return paths.hub_cache_dir().expanduser().resolve()


def repo_dir(repo_id: str) -> Path:
    """Where huggingface_hub keeps one model repository inside :func:`hub_dir`."""
    return hub_dir() / ("models--" + repo_id.replace("/", "--"))


def _verified_dir() -> Path:
    return paths.cache_dir().expanduser() / "verified"


# --- fetching -----------------------------------------------------------------------------------


def is_cached(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether ``filename`` of ``repo_id`` is in the synnav cache. Local only; no integrity check."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=hub_dir(), revision=revision)
    return isinstance(found, str) and os.path.isfile(found)


def fetch(
    repo_id: str,
    filenames: Sequence[str],
    *,
    licence: str | None = None,
    backbone: str | None = None,
    offline: bool = False,
    revision: str | None = None,
) -> Path:
    """Make sure ``filenames`` of ``repo_id`` are cached and intact; return their snapshot directory.

    Arguments:
        repo_id: the Hugging Face repository, e.g. ``"facebook/esm2_t6_8M_UR50D"``.
        filenames: paths inside the repository; all come from one commit.
        licence: the licence the weights carry, printed (once) when a download starts.
        backbone: the backbone that needs them, named in messages.
        offline: never touch the network (``SYNNAV_OFFLINE=1``/``HF_HUB_OFFLINE=1`` do the same).
        revision: branch, tag or commit; default ``main``.

    Files are downloaded when missing (progress bars on stderr when it is a terminal) and checked
    against the hash the hub cache records before first use. When every file is cached the Hub
    is not contacted at all. Raises ``UserError`` for anything the
    user must fix; ``RemoteFileMissing`` (a ``UserError``) when the repository has no such file.
    """
    from huggingface_hub import hf_hub_download

    if not filenames:
        raise ValueError("fetch needs at least one filename")
    cache = hub_dir()
    is_offline = offline_mode(offline)
    # Files already cached are used without asking the Hub whether the branch has moved: a model
    # keeps the weights it was first given (and starts without a network round trip) until
    # `synnav cache clear` removes them.
    local_only = is_offline or all(is_cached(repo_id, f, revision) for f in filenames)
    if not local_only:
        _announce(repo_id, filenames, licence=licence, backbone=backbone, cache=cache)

    snapshot: Path | None = None
    with _progress_bars_only_on_a_terminal(), _hub_warnings_silenced():
        for filename in filenames:
            try:
                local = Path(
                    hf_hub_download(
                        repo_id,
                        filename,
                        cache_dir=cache,
                        revision=revision,
                        local_files_only=local_only,
                    )
                )
            except Exception as error:  # noqa: BLE001 - translated below, or re-raised as is
                translated = _translate_hub_error(
                    error, repo_id, filename, backbone=backbone, offline=offline, cache=cache
                )
                if translated is None:
                    raise
                raise translated from error
            if snapshot is None:
                snapshot = local.parents[len(Path(filename).parts) - 1]
                # Later files come from the same commit even if the branch moves meanwhile.
                revision = snapshot.name
            verify(local, repo_id=repo_id, filename=filename)
    assert snapshot is not None
    return snapshot


class RemoteFileMissing(UserError):
    """The repository exists but has no file of that name (at that revision)."""


def _announce(
    repo_id: str,
    filenames: Sequence[str],
    *,
    licence: str | None,
    backbone: str | None,
    cache: Path,
) -> None:
    if repo_id in _announced:
        return
    _announced.add(repo_id)
    who = f" for backbone {backbone}" if backbone else ""
    terms = f"under the {licence} licence" if licence else "under the licence on its model page"
    print(
        f"synnav: downloading {repo_id} ({', '.join(filenames)}){who} into {cache}\n"
        f"synnav: these weights are {terms}: {model_page(repo_id)}",
        file=sys.stderr,
        flush=True,
    )


@contextmanager
def _hub_warnings_silenced() -> Iterator[None]:
    """huggingface_hub logs each failed request as a warning before raising; the error it raises
    is turned into one clear line here, so its log line would only repeat it, as a second line."""
    logger = logging.getLogger("huggingface_hub")
    previous = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(previous)


@contextmanager
def _progress_bars_only_on_a_terminal() -> Iterator[None]:
    """huggingface_hub draws progress bars on stderr; in logs they are noise, so hide them there.

    A user's explicit ``HF_HUB_DISABLE_PROGRESS_BARS`` (either way) is left alone.
    """
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    stderr_is_terminal = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    if (
        stderr_is_terminal
        or "HF_HUB_DISABLE_PROGRESS_BARS" in os.environ
        or are_progress_bars_disabled()
    ):
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _fetch_hint(repo_id: str, filename: str, backbone: str | None, cache: Path) -> str:
    command = f"synnav cache fetch {backbone}" if backbone else f"hf download {repo_id} {filename}"
    return (
        f"with network access, run `{command}` once (or copy in a cache made with "
        f"`hf download {repo_id} {filename} --cache-dir {cache}`)"
    )


def _login_hint(repo_id: str) -> str:
    return (
        f"accept its licence on {model_page(repo_id)} while logged in there, then log in here "
        "with `hf auth login` or set HF_TOKEN"
    )


def _translate_hub_error(
    error: Exception,
    repo_id: str,
    filename: str,
    *,
    backbone: str | None,
    offline: bool,
    cache: Path,
) -> UserError | None:
    """One actionable line for a huggingface_hub failure; None when it is not the user's to fix."""
    from huggingface_hub import errors as hub_errors

    def hub_error(name: str) -> type | tuple[()]:
        # Not every huggingface_hub version the package allows exports every class here.
        return getattr(hub_errors, name, ())

    what = f"{repo_id} ({filename})"
    status = getattr(getattr(error, "response", None), "status_code", None)

    if isinstance(error, hub_error("GatedRepoError")):
        return UserError(f"{repo_id} is a gated repository: {_login_hint(repo_id)}")
    if isinstance(error, hub_error("RepositoryNotFoundError")):
        # The hub answers "not found" for private repositories too, whatever the token.
        return UserError(
            f"repository {repo_id} was not found on the Hugging Face Hub, or it needs access "
            f"rights: if it is gated or private, {_login_hint(repo_id)}"
        )
    if isinstance(error, hub_error("RevisionNotFoundError")):
        return UserError(f"{repo_id} has no revision of that name on the Hugging Face Hub")
    if isinstance(error, hub_error("LocalEntryNotFoundError")) or isinstance(
        error, hub_error("OfflineModeIsEnabled")
    ):
        if offline_mode(offline):
            return UserError(
                f"{what} is not in the synnav cache ({cache}) and offline mode is on "
                f"({_offline_reason(offline)}): {_fetch_hint(repo_id, filename, backbone, cache)}"
            )
        cause = error.__cause__ or error.__context__
        detail = f" ({_one_line(cause)})" if cause is not None else ""
        return UserError(
            f"could not download {what}: the Hugging Face Hub could not be reached{detail} and "
            f"the file is not cached; check the connection (and HTTPS_PROXY), or set "
            f"{OFFLINE_ENV}=1 to use cached weights only"
        )
    if isinstance(error, hub_error("EntryNotFoundError")):
        return RemoteFileMissing(f"{repo_id} has no file {filename}")
    if isinstance(error, hub_error("HfHubHTTPError")):
        if status == 401:
            return UserError(
                f"the Hugging Face Hub rejected the token while downloading {what} (401: invalid "
                "or expired): log in again with `hf auth login` or set a valid HF_TOKEN"
            )
        if status == 403:
            return UserError(
                f"the Hugging Face Hub denied access to {repo_id} (403): {_login_hint(repo_id)} "
                "(a fine-grained token needs read access to public gated repositories)"
            )
        return UserError(
            f"the Hugging Face Hub failed while downloading {what}: {_one_line(error)}; "
            "try again later"
        )
    if "Consistency check failed" in str(error):
        return UserError(
            f"the download of {what} ended early (the file's size is wrong); run the command "
            "again to download it afresh"
        )
    if _is_network_error(error):
        return UserError(
            f"network failure while downloading {what}: {_one_line(error)}; check the "
            "connection and run the command again (finished files are kept)"
        )
    if isinstance(error, OSError) and error.errno is not None:
        return UserError(f"could not write {what} into the cache at {cache}: {_one_line(error)}")
    return None


def _is_network_error(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return any(
        cls.__module__.split(".")[0] in _NETWORK_MODULES for cls in type(error).__mro__
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


# --- integrity ----------------------------------------------------------------------------------


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
        commit = path.relative_to(repo_dir(repo_id) / "snapshots").parts[0]
        listing = json.loads((repo_dir(repo_id) / "trees" / f"{commit}.json").read_text())
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
    stamp_file = _verified_dir() / digest
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
        f"could not load cached file {filename} of {repo_id} ({_one_line(error)}); it is probably "
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


# --- listing and clearing -----------------------------------------------------------------------


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


def backbones_by_repo() -> dict[str, tuple[str, ...]]:
    """Registered backbone ids by the (lower-cased) repository their weights come from."""
    from synnav_cli.plugins import backbone_registry

    found: dict[str, list[str]] = {}
    for backbone_id, backbone in sorted(backbone_registry().backbones.items()):
        if backbone.weights_repo:
            found.setdefault(backbone.weights_repo.lower(), []).append(backbone_id)
    return {repo: tuple(ids) for repo, ids in found.items()}


def cached_repos(backbones: Mapping[str, Sequence[str]] | None = None) -> list[CachedRepo]:
    """Every model repository in the synnav cache, sorted by id.

    ``backbones`` maps lower-cased repository ids to backbone ids; by default the plugin
    registry is asked (cheap: no weights are loaded).
    """
    root = hub_dir()
    if not root.is_dir():
        return []
    if backbones is None:
        backbones = backbones_by_repo()
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
    listed = cached_repos(backbones={})
    removed = [r for r in listed if repo_id is None or r.repo_id.lower() == repo_id.lower()]
    for repo in removed:
        _delete_with_hub(repo.repo_id, repo.revisions)
        # What the hub's own deletion leaves behind: partial downloads, a repo folder without
        # snapshots, download locks.
        _remove_inside(repo.path, hub_dir())
        locks = hub_dir() / ".locks"
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
    stamps = _verified_dir()
    if stamps.is_symlink() or not stamps.is_dir():
        return
    for stamp in stamps.iterdir():
        if stamp.is_file() and not stamp.is_symlink() and all(c in "0123456789abcdef" for c in stamp.name):
            stamp.unlink()


def _delete_with_hub(repo_id: str, revisions: Sequence[str]) -> None:
    """Delete through huggingface_hub, which also frees blobs it shares between repositories."""
    if not revisions:
        return
    from huggingface_hub import scan_cache_dir

    try:
        info = scan_cache_dir(hub_dir())
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
