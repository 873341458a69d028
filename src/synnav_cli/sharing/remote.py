"""Calls to the Hub's API for sharing models, and their failures said in one line."""

from __future__ import annotations

import re

from synnav_cli.errors import UserError, one_line
from synnav_cli.weights import hub

_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")
# Packages whose exceptions mean the network failed; a prefix, since HTTP clients ship renamed
# major versions (httpx2, httpcore2) that huggingface_hub may use.
_NETWORK_MODULES = ("requests", "urllib3", "httpx", "httpcore", "ssl", "socket")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` when it names a model repository as ORG/NAME, else a one-line ``UserError``."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        repo_id = ""
    if repo_id.count("/") != 1:
        raise UserError("a Hub repository is written ORG/NAME (e.g. my-lab/synnav-esmc600m)")
    return repo_id


def check_revision(revision: str) -> str:
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise UserError(f"{revision!r} is not a branch, tag or commit name")
    return revision


def token_or_error() -> str:
    """The Hugging Face token from the usual places (HF_TOKEN, `hf auth login`)."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UserError(
            "no Hugging Face token: log in with `hf auth login` (or set HF_TOKEN) using a token "
            "with write access"
        )
    return token


def hub_failure(error: Exception, repo_id: str, doing: str) -> UserError | None:
    """One actionable line for a failed Hub call (``doing``: "uploading to", "reading"), or None
    when the failure is not the user's to fix."""
    from huggingface_hub import errors

    def kind(name: str) -> type | tuple[()]:
        return getattr(errors, name, ())

    status = getattr(getattr(error, "response", None), "status_code", None)
    login = (
        f"accept its terms on {hub.model_page(repo_id)} if it is gated, and log in with "
        "`hf auth login` or set HF_TOKEN"
    )
    if isinstance(error, kind("GatedRepoError")):
        return UserError(f"{repo_id} is a gated repository: {login}")
    if isinstance(error, kind("RepositoryNotFoundError")):
        return UserError(
            f"repository {repo_id} was not found on the Hugging Face Hub, or it is private: {login}"
        )
    if isinstance(error, kind("RevisionNotFoundError")):
        return UserError(f"{repo_id} has no revision of that name on the Hugging Face Hub")
    if isinstance(error, kind("HfHubHTTPError")):
        if status == 401:
            return UserError(
                f"the Hugging Face Hub rejected the token while {doing} {repo_id} (401): log in "
                "again with `hf auth login` or set a valid HF_TOKEN"
            )
        if status == 403:
            return UserError(
                f"the Hugging Face Hub denied access while {doing} {repo_id} (403): the token "
                "needs write access to that namespace"
            )
        return UserError(f"the Hugging Face Hub failed while {doing} {repo_id}: {one_line(error)}")
    network = isinstance(error, (ConnectionError, TimeoutError)) or any(
        cls.__module__.split(".")[0].startswith(_NETWORK_MODULES) for cls in type(error).__mro__
    )
    if network:
        return UserError(
            f"network failure while {doing} {repo_id}: {one_line(error)}; check the connection "
            "and run the command again"
        )
    return None


def remote_files(repo_id: str, revision: str | None) -> tuple[str, dict[str, int]]:
    """The commit ``revision`` (default: main) of ``repo_id`` names, and the size of each file."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as error:  # translated, or re-raised as is
        translated = hub_failure(error, repo_id, "reading")
        if translated is None:
            raise
        raise translated from error
    return str(info.sha), {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}
