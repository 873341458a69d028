"""Fetching weights: downloads from the Hugging Face Hub into the synnav cache, offline use, errors.

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
before their first use, and again whenever their size or modification time changes
(:mod:`synnav_cli.weights.integrity`); :mod:`synnav_cli.weights.listing` lists and clears the cache.

No click here: ``synnav_cli.cli.cache`` is the command-line face of this module.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from synnav_cli import paths
from synnav_cli.errors import UserError, one_line
from synnav_cli.weights.integrity import verify

if TYPE_CHECKING:
    pass

OFFLINE_ENV = "SYNNAV_OFFLINE"
# Architecture switch for tests and plugin authors; see tiny_backbones().
TINY_ENV = "SYNNAV_TEST_TINY_BACKBONES"
HUB_URL = "https://huggingface.co"

_HF_OFFLINE_ENVS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "true", "yes", "on"}
# Exceptions raised by the HTTP stacks huggingface_hub has used (requests before 1.0, httpx
# after) are network failures; matching on the module keeps this independent of the version.
_NETWORK_MODULES = {"requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2", "ssl"}

_announced: set[str] = set()


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def offline_mode(offline: bool = False) -> bool:
    """Whether to stay off the network: ``offline``, ``SYNNAV_OFFLINE=1``, ``HF_HUB_OFFLINE=1``."""
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


# --- fetching -----------------------------------------------------------------------------------


def is_cached(repo_id: str, filename: str, revision: str | None = None) -> bool:
    """Whether ``filename`` of ``repo_id`` is in the synnav cache (local only, no hash check)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=paths.hub_dir(), revision=revision)
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
    """Make sure ``filenames`` of ``repo_id`` are cached and intact; return their snapshot folder.

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
    cache = paths.hub_dir()
    is_offline = offline_mode(offline)
    # Files already cached are used without asking the Hub whether the branch has moved: a model
    # keeps the weights it was first given (and starts without a network round trip) until
    # `synnav cache clear` removes them.
    local_only = is_offline or all(is_cached(repo_id, f, revision) for f in filenames)
    if not local_only:
        _fail_fast_when_unreachable(repo_id, filenames, revision)
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


def _fail_fast_when_unreachable(repo_id: str, filenames: Sequence[str], revision: str | None):
    """One request without retries first: a Hub that cannot be connected to is reported in
    seconds, not after huggingface_hub's 24 s of retries (see :mod:`~synnav_cli.weights.reach`)."""
    from synnav_cli.weights.reach import unreachable

    missing = next(f for f in filenames if not is_cached(repo_id, f, revision))
    failure = unreachable(repo_id, missing, revision)
    if failure is not None:
        raise UserError(
            f"could not download {repo_id} ({missing}): the Hugging Face Hub could not be "
            f"reached ({one_line(failure)}) and the file is not cached; check the connection "
            f"(and HTTPS_PROXY), or set {OFFLINE_ENV}=1 to use cached weights only"
        ) from failure


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
        detail = f" ({one_line(cause)})" if cause is not None else ""
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
            f"the Hugging Face Hub failed while downloading {what}: {one_line(error)}; "
            "try again later"
        )
    if "Consistency check failed" in str(error):
        return UserError(
            f"the download of {what} ended early (the file's size is wrong); run the command "
            "again to download it afresh"
        )
    if _is_network_error(error):
        return UserError(
            f"network failure while downloading {what}: {one_line(error)}; check the "
            "connection and run the command again (finished files are kept)"
        )
    if isinstance(error, OSError) and error.errno is not None:
        return UserError(f"could not write {what} into the cache at {cache}: {one_line(error)}")
    return None


def _is_network_error(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return any(cls.__module__.split(".")[0] in _NETWORK_MODULES for cls in type(error).__mro__)
