"""``synnav models push`` and ``synnav models pull``: models shared through the Hugging Face Hub."""

from __future__ import annotations

import click


@click.command("push")
@click.argument("name")
@click.argument("repo_id", metavar="REPO_ID")
@click.option(
    "--private",
    is_flag=True,
    help="Create the repository private (an existing one keeps its visibility).  [default: public]",
)
@click.option(
    "--revision",
    default=None,
    help="Branch to commit to, created from main when missing.  [default: main]",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the model and print the model card instead of uploading.  [default: upload]",
)
def models_push(
    name: str, repo_id: str, private: bool, revision: str | None, dry_run: bool
) -> None:
    """Upload model NAME (a name from `synnav models list`, or a model directory) to the Hugging
    Face Hub repository REPO_ID (ORG/NAME), with a model card.

    Only the files the model's metadata lists are uploaded (safetensors weights, JSON), with
    their sizes and sha256 hashes in synnav-files.json. The token comes from `hf auth login` or
    HF_TOKEN. Prints the commit's URL.
    """
    from synnav_cli import console
    from synnav_cli.modeldir import resolve_model
    from synnav_cli.sharing.push import plan_push, push
    from synnav_cli.sharing.remote import token_or_error

    if not dry_run:
        token_or_error()  # before hashing gigabytes of weights
    info, _how = resolve_model(name)
    plan = plan_push(info.path, info.meta, repo_id, info.name, revision)
    if plan.left_out:
        console.warn(f"not uploaded (the metadata does not list them): {', '.join(plan.left_out)}")
    if dry_run:
        console.info(f"Would push {info.name} to {plan.repo_id}: {', '.join(plan.uploads)}")
        click.echo(plan.card, nl=False)
        return
    console.info(f"Pushing {info.name} to {plan.repo_id}: {', '.join(plan.uploads)}")
    click.echo(push(plan, private=private, revision=revision))


@click.command("pull")
@click.argument("ref", metavar="REPO_ID[@REVISION]")
@click.option(
    "--name",
    default=None,
    help="Local name to register the model under.  [default: ORG--NAME, plus --REVISION if given]",
)
@click.option(
    "--offline",
    is_flag=True,
    envvar="SYNNAV_OFFLINE",
    help="Use the synnav cache only.  [default: off; env: SYNNAV_OFFLINE, HF_HUB_OFFLINE]",
)
def models_pull(ref: str, name: str | None, offline: bool) -> None:
    """Download a model pushed with `synnav models push` into the synnav cache, check it as a
    local model is checked (hashes, safetensors only, metadata) and register it under a local
    name, which `--model` then accepts (as does `--model hf:REPO_ID[@REVISION]`).

    Pulling again updates the registered copy. Prints the local name and directory.
    """
    from synnav_cli.modeldir import read_model_info
    from synnav_cli.sharing.pull import parse_ref, pull

    folder = pull(parse_ref(ref), validate=read_model_info, name=name, offline=offline)
    click.echo(f"{folder.name}\t{folder}")
