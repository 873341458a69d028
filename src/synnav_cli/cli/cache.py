"""``synnav cache``: where weights are kept, what is there, fetching ahead and deleting.

Commands parse options and print; the work is in :mod:`synnav_cli.weights`.
"""

from __future__ import annotations

import json
import sys

import click

from synnav_cli import paths
from synnav_cli.cli.views import format_table
from synnav_cli.errors import UserError
from synnav_cli.weights import hub, listing

CACHE_HELP = f"""Manage downloaded model weights.

Weights are kept under ${paths.CACHE_ENV} (default: the platform cache directory), in the
Hugging Face Hub cache layout, and never in the default Hugging Face cache. Set
{hub.OFFLINE_ENV}=1 (or HF_HUB_OFFLINE=1) to forbid downloads.

\b
Examples:
  synnav cache path
  synnav cache list --json
  synnav cache fetch esmc600m        # download now, e.g. before going offline
  synnav cache clear esm2_8m --yes
  synnav cache clear --yes           # every downloaded weight file
"""


def _stdin_is_interactive() -> bool:
    # A prompt on a closed or piped stdin would hang or read garbage; only a terminal may answer.
    return sys.stdin is not None and hasattr(sys.stdin, "isatty") and sys.stdin.isatty()


def _size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def _resolve_backbone(name: str):
    from synnav_cli.plugins import get_backbone

    return get_backbone(name)


def backbones_by_repo() -> dict[str, tuple[str, ...]]:
    """Registered backbone ids by the (lower-cased) repository their weights come from."""
    from synnav_cli.plugins import backbone_registry

    found: dict[str, list[str]] = {}
    for backbone_id, backbone in sorted(backbone_registry().backbones.items()):
        if backbone.weights_repo:
            found.setdefault(backbone.weights_repo.lower(), []).append(backbone_id)
    return {repo: tuple(ids) for repo, ids in found.items()}


def _repo_for(name: str) -> str:
    """A backbone name or alias to its weights repository; ``org/name`` is taken as a repository."""
    if "/" in name:
        return name
    backbone = _resolve_backbone(name)
    if not backbone.weights_repo:
        raise UserError(f"backbone {backbone.id} downloads no weights; there is nothing to clear")
    return backbone.weights_repo


@click.group("cache", help=CACHE_HELP, context_settings={"help_option_names": ["-h", "--help"]})
def cache_group() -> None:
    pass


@cache_group.command("path")
def path_command() -> None:
    """Print the synnav cache directory (weights are in its hub/ folder)."""
    click.echo(str(paths.cache_dir()))


@cache_group.command("list")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON list instead of a table.  [default: table]",
)
def list_command(as_json: bool) -> None:
    """List cached weight repositories: size on disk, files, and the backbones that use them."""
    repos = listing.cached_repos(backbones_by_repo())
    if as_json:
        click.echo(json.dumps([repo.to_json() for repo in repos], indent=2))
        return
    if not repos:
        click.echo(f"No weights cached in {paths.hub_dir()}.", err=True)
        return
    rows = [["REPOSITORY", "SIZE", "BACKBONES", "FILES"]]
    for repo in repos:
        rows.append([repo.repo_id, _size(repo.size_on_disk), ", ".join(repo.backbones) or "-",
                     ", ".join(repo.files) or "(incomplete)"])  # fmt: skip
    click.echo(format_table(rows[0], rows[1:]))


@cache_group.command("fetch")
@click.argument("backbones", nargs=-1, required=True, metavar="BACKBONE...")
def fetch_command(backbones: tuple[str, ...]) -> None:
    """Download the weights of BACKBONE now (names or aliases, as `synnav backbones` lists)."""
    for name in backbones:
        backbone = _resolve_backbone(name)
        if backbone.weights_repo is None:
            click.echo(f"{backbone.id}: no weights to download", err=True)
            continue
        backbone.fetch_weights()
        click.echo(f"{backbone.id}: weights cached ({backbone.weights_repo}, {backbone.license})")


@cache_group.command("clear")
@click.argument("names", nargs=-1, metavar="[BACKBONE|ORG/REPO]...")
@click.option("--yes", "-y", is_flag=True,
              help="Delete without asking (required when stdin is not a terminal).  "
                   "[default: ask]")  # fmt: skip
def clear_command(names: tuple[str, ...], yes: bool) -> None:
    """Delete cached weights: of the named backbones (or repositories), or all of them.

    They are downloaded again the next time a backbone needs them.
    """
    targets = [_repo_for(name) for name in names]
    cached = {repo.repo_id.lower(): repo for repo in listing.cached_repos(backbones_by_repo())}
    if names:
        found = [cached[t.lower()] for t in dict.fromkeys(targets) if t.lower() in cached]
    else:
        found = list(cached.values())
    if not found:
        what = (
            f"{', '.join(targets)} not cached" if names else f"{paths.hub_dir()} holds no weights"
        )
        click.echo(f"Nothing to delete: {what}.", err=True)
        return
    total = sum(repo.size_on_disk for repo in found)
    shown = ", ".join(repo.repo_id for repo in found)
    if not yes:
        if not _stdin_is_interactive():
            raise UserError(f"not deleting {shown} without confirmation: pass --yes")
        click.confirm(f"Delete {_size(total)} of cached weights ({shown})?", abort=True, err=True)
    if names:
        for repo in found:
            listing.clear(repo.repo_id)
    else:
        listing.clear(None)
    click.echo(f"Deleted {_size(total)}: {shown}", err=True)
