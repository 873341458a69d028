"""Models pulled from the Hugging Face Hub: ``synnav models pull`` and ``--model hf:ORG/NAME``.

A pull reads the repository's manifest first, refuses anything it does not allow (see
:mod:`synnav_cli.sharing.files`), fetches the files it names into the synnav cache (the Hub's
layout, through :mod:`synnav_cli.weights.hub`: offline mode, hash checks, errors), checks each
against the manifest and the metadata with the checks a local model passes, and only then
registers a copy under a local name in the models directory, with ``synnav-source.json`` saying
where it came from. ``--model hf:...`` uses that copy; offline it is the only way.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from synnav_cli import console, paths
from synnav_cli.errors import UserError
from synnav_cli.files import exclusive_lock, temporary_dir, write_json_atomic
from synnav_cli.sharing.files import (
    MANIFEST_FILE,
    SOURCE_FILE,
    check_pulled_file,
    listed_files,
    read_manifest,
)
from synnav_cli.sharing.remote import check_repo_id, check_revision, remote_files
from synnav_cli.weights import hub

HF_PREFIX = "hf:"
# modeldir.read_model_info: raises a UserError for metadata a local model could not have, else
# returns the model's info (with ``.meta``). Passed in because modeldir calls this package.
Validate = Callable[[Path], object]


@dataclass(frozen=True)
class HubRef:
    repo: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo + (f"@{self.revision}" if self.revision else "")

    @property
    def local_name(self) -> str:
        """The name a pull registers the model under unless told another."""
        name = self.repo.replace("/", "--")
        return name + (f"--{self.revision.replace('/', '-')}" if self.revision else "")


def parse_ref(text: str) -> HubRef:
    """``ORG/NAME[@REVISION]``, with or without the ``hf:`` prefix."""
    repo, at, revision = text.removeprefix(HF_PREFIX).partition("@")
    return HubRef(check_repo_id(repo), check_revision(revision) if at else None)


def read_source(folder: Path) -> dict | None:
    """Where the model in ``folder`` was pulled from (repo, revision, commit), or None."""
    path = folder / SOURCE_FILE
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 65536:
            return None
        source = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    keys = ("repo", "revision", "commit")
    if not isinstance(source, dict) or not all(isinstance(source.get(k), str) for k in keys):
        return None
    return source


def describe_source(folder: Path, *, bundled: bool = False) -> str:
    """Where a model came from, as `synnav models list` shows it."""
    if bundled:
        return "bundled"
    source = read_source(folder)
    if source is None:
        return "trained here"
    return f"hf:{source['repo']}@{source['revision']} ({source['commit'][:12]})"


def find_pulled(ref: HubRef) -> Path | None:
    """The registered copy of ``ref`` in the models directory, if there is one."""
    root = paths.models_dir()
    wanted = ref.revision or "main"
    candidates = [root / ref.local_name]
    if root.is_dir():
        candidates += sorted(p for p in root.iterdir() if not p.name.startswith("."))
    for folder in candidates:
        source = read_source(folder)
        if (
            source
            and source["repo"] == ref.repo
            and wanted in (source["revision"], source["commit"])
        ):
            return folder
    return None


def resolve_hf(text: str, *, validate: Validate, offline: bool = False) -> Path:
    """The model directory ``hf:ORG/NAME[@REV]`` names: the registered copy, else pulled now.

    The jobs of an array that all start with the same new ``hf:`` name pull it once: the others
    wait for that pull (up to ``WAIT_FOR_PULL_S``) and use its copy.
    """
    ref = parse_ref(text)
    deadline = time.monotonic() + WAIT_FOR_PULL_S
    said = False
    while True:
        found = find_pulled(ref)
        if found is not None:
            return found
        lock = _pull_lock(ref)
        if lock is not None:
            break
        if time.monotonic() > deadline:
            raise _busy(ref)
        if not said:
            console.info(f"Waiting for another synnav process pulling hf:{ref}.")
            said = True
        time.sleep(1.0)
    with lock:
        found = find_pulled(ref)
        if found is not None:
            return found
        console.info(f"Pulling hf:{ref} (first use); it will be kept as {ref.local_name}.")
        return _pull(ref, validate=validate, name=None, offline=offline)


WAIT_FOR_PULL_S = 3600.0


def _pull_lock(ref: HubRef) -> ExitStack | None:
    """The lock on pulling ``ref`` (held until the stack closes), or None: another process has it."""
    stack = ExitStack()
    path = paths.models_dir() / f".{ref.local_name}.pull-lock"
    try:
        stack.enter_context(exclusive_lock(path, f"hf:{ref}"))
    except UserError:
        return None
    return stack


def _busy(ref: HubRef) -> UserError:
    return UserError(f"another synnav process is pulling hf:{ref}; wait for it to finish")


def pull(
    ref: HubRef, *, validate: Validate, name: str | None = None, offline: bool = False
) -> Path:
    """Fetch, check and register the model ``ref`` names; return its model directory.

    Arguments:
        ref: the repository and revision (None: main).
        validate: the metadata checks of a local model (``modeldir.read_model_info``).
        name: the local name (default ``ORG--NAME[--REVISION]``); an existing directory of that
            name is replaced only when it holds an earlier pull of the same repository.
        offline: use the synnav cache only (``SYNNAV_OFFLINE=1``/``HF_HUB_OFFLINE=1`` do the same).
    """
    lock = _pull_lock(ref)
    if lock is None:
        raise _busy(ref)
    with lock:
        return _pull(ref, validate=validate, name=name, offline=offline)


def _pull(ref: HubRef, *, validate: Validate, name: str | None, offline: bool) -> Path:
    target = paths.models_dir() / (name or ref.local_name)
    if name is not None and (name.startswith(".") or Path(name).name != name):
        raise UserError(f"--name {name!r} must be a plain name, not a path")
    _check_target(target, ref)
    offline = hub.offline_mode(offline)
    revision, remote_sizes = ref.revision, None
    if offline:
        if not hub.is_cached(ref.repo, MANIFEST_FILE, ref.revision):
            if _snapshot_cached(ref):
                raise _not_synnav(ref)
            registered = find_pulled(ref)
            if registered is not None:
                raise UserError(
                    f"hf:{ref} is registered as {registered.name} (use --model "
                    f"{registered.name}); offline, it cannot be pulled again"
                )
            raise UserError(
                f"hf:{ref} has not been pulled and offline mode is on (--offline, SYNNAV_OFFLINE "
                f"or HF_HUB_OFFLINE): with network access, run `synnav models pull {ref}` once"
            )
    else:
        revision, remote_sizes = remote_files(ref.repo, ref.revision)
        if MANIFEST_FILE not in remote_sizes:
            raise _not_synnav(ref)
    try:
        snapshot = hub.fetch(ref.repo, [MANIFEST_FILE], revision=revision, offline=offline)
    except hub.RemoteFileMissing:
        raise _not_synnav(ref) from None
    manifest = read_manifest(snapshot / MANIFEST_FILE, ref.repo)
    for file_name, entry in manifest.items():
        if remote_sizes is not None and remote_sizes.get(file_name) != entry["size"]:
            raise UserError(
                f"{ref.repo} is refused: the Hub holds {file_name} as "
                f"{remote_sizes.get(file_name, 'no')} bytes where its manifest says {entry['size']:,}"
            )
    hub.fetch(ref.repo, list(manifest), revision=snapshot.name, offline=offline)
    for file_name, entry in manifest.items():
        check_pulled_file(snapshot / file_name, file_name, entry, ref.repo)
    try:
        info = validate(snapshot)
        listed = listed_files(info.meta)  # type: ignore[attr-defined]
    except UserError as error:
        raise UserError(f"{ref.repo} is refused: {error}") from None
    if sorted(listed) != sorted(manifest):
        raise UserError(
            f"{ref.repo} is refused: its manifest names {', '.join(sorted(manifest))} but its "
            f"metadata lists {', '.join(sorted(listed))}"
        )
    source = {
        "repo": ref.repo,
        "revision": ref.revision or "main",
        "commit": snapshot.name,
        "pulled": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _register(snapshot, list(manifest), target, source)
    console.info(f"Pulled hf:{ref} (commit {snapshot.name[:12]}) as {target.name}.")
    return target


def _snapshot_cached(ref: HubRef) -> bool:
    """Whether the cache holds the revision ``ref`` names (a branch or tag, or a commit)."""
    revision = ref.revision or "main"
    folder = paths.repo_dir(ref.repo)
    return (folder / "refs" / revision).is_file() or (folder / "snapshots" / revision).is_dir()


def _not_synnav(ref: HubRef) -> UserError:
    return UserError(
        f"{ref.repo} is not a synnav model: it has no {MANIFEST_FILE} (which `synnav models push` "
        "writes)"
    )


def _check_target(target: Path, ref: HubRef) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    source = read_source(target) if not target.is_symlink() else None
    if source is None or source["repo"] != ref.repo:
        raise UserError(
            f"{target} already exists and is not a pull of {ref.repo}; choose another --name"
        )


def link_or_copy(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (no second copy of the bytes), else a copy."""
    real = Path(os.path.realpath(source))
    try:
        os.link(real, target)
    except OSError:
        shutil.copyfile(real, target)


def _register(snapshot: Path, names: list[str], target: Path, source: dict) -> None:
    """Copy the checked files into ``target`` in one rename; an earlier pull there is replaced
    only once the new copy is complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_dir(target.parent, prefix=f".{target.name}.pull-")
    try:
        for file_name in names:
            link_or_copy(snapshot / file_name, staging / file_name)
        write_json_atomic(staging / SOURCE_FILE, source)
        if target.exists():
            retired = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, retired)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
