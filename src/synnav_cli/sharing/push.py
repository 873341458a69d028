"""``synnav models push``: a model directory, checked, to a Hugging Face Hub repository.

Exactly the files the metadata lists go up (see :mod:`synnav_cli.sharing.files`), with their
manifest and a model card; the commit removes whatever else the repository held, so the
repository is the model directory and nothing more. A repository that holds files of something
other than a synnav model is refused rather than emptied.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from synnav_cli.errors import UserError
from synnav_cli.sharing.card import model_card
from synnav_cli.sharing.files import (
    CARD_FILE,
    MANIFEST_FILE,
    SOURCE_FILE,
    listed_files,
    manifest_for,
)
from synnav_cli.sharing.pull import link_or_copy
from synnav_cli.sharing.remote import check_repo_id, check_revision, hub_failure, token_or_error

# What a repository may hold and still be taken over by a push: the Hub creates these itself.
_HUB_OWN = {".gitattributes", CARD_FILE}


@dataclass
class PushPlan:
    folder: Path
    repo_id: str
    manifest: dict
    card: str
    left_out: list[str]  # files in the directory its metadata does not list: not uploaded

    @property
    def uploads(self) -> list[str]:
        return [*self.manifest["files"], MANIFEST_FILE, CARD_FILE]


def plan_push(
    folder: Path, meta: dict, repo_id: str, name: str, revision: str | None = None
) -> PushPlan:
    """Check the model directory ``folder`` (metadata ``meta``) and say what a push of it to
    ``repo_id`` (at branch ``revision``; None: main) uploads."""
    repo_id = check_repo_id(repo_id)
    if revision is not None:
        check_revision(revision)
    names = listed_files(meta)
    manifest = manifest_for(folder, names)
    left_out = sorted(
        p.name for p in folder.iterdir() if p.name not in names and p.name != SOURCE_FILE
    )
    return PushPlan(
        folder,
        repo_id,
        manifest,
        model_card(meta, repo_id, manifest["files"], name, revision),
        left_out,
    )


def push(plan: PushPlan, *, private: bool = False, revision: str | None = None, api=None) -> str:
    """Upload ``plan`` in one commit; return the commit's URL.

    Arguments:
        plan: from :func:`plan_push`.
        private: create the repository private (an existing one keeps its visibility).
        revision: the branch to commit to (created from main if missing); default main.
        api: a ``huggingface_hub.HfApi`` (default: one with the token from the usual places).
    """
    from huggingface_hub import HfApi

    if revision is not None:
        check_revision(revision)
    token_or_error()
    api = api or HfApi()
    with tempfile.TemporaryDirectory(prefix="synnav-push-") as tmp:
        staging = Path(tmp)
        for name in plan.manifest["files"]:
            link_or_copy(plan.folder / name, staging / name)
        (staging / MANIFEST_FILE).write_text(json.dumps(plan.manifest, indent=2) + "\n")
        (staging / CARD_FILE).write_text(plan.card, encoding="utf-8")
        try:
            api.create_repo(plan.repo_id, private=private, exist_ok=True)
            held = set(api.list_repo_files(plan.repo_id))
            if held - _HUB_OWN and MANIFEST_FILE not in held:
                raise UserError(
                    f"{plan.repo_id} already holds files that are not a synnav model "
                    f"({', '.join(sorted(held - _HUB_OWN)[:3])}...); push to a new repository"
                )
            if revision not in (None, "main"):
                api.create_branch(plan.repo_id, branch=revision, exist_ok=True)
            commit = api.upload_folder(
                repo_id=plan.repo_id,
                folder_path=staging,
                revision=revision,
                commit_message=f"synnav model {plan.repo_id.split('/')[1]}",
                # The repository holds the model and nothing else: files of an earlier push
                # that this model no longer lists go in the same commit.
                delete_patterns="*",
            )
        except UserError:
            raise
        except Exception as error:  # translated, or re-raised as is
            translated = hub_failure(error, plan.repo_id, "uploading to")
            if translated is None:
                raise
            raise translated from error
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{plan.repo_id}")
