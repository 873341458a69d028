"""The ``synnav`` command line: parse options, call typed functions, print results."""

from __future__ import annotations

import errno
import io
import json
import os
import sys
from pathlib import Path

import click

from synnav_cli.errors import UserError, os_error_line

EXAMPLES = """
\b
Examples:
  synnav predict proteome.fasta > out.tsv
  cat proteins.fasta | synnav predict - --format jsonl
  synnav train --backbone esmc600m --data data/dataset.json
  synnav evaluate --model esmc600m-20261125-101500 --data data/dataset.json
  synnav backbones --json
"""


class _ClosedOutput(io.TextIOBase):
    """Standard output after ``>&-``: writing to it is the error a closed descriptor gives."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        raise OSError(errno.EBADF, "standard output is closed; pass --out FILE or leave it open")


def _guard_closed_stdout() -> None:
    """With standard output closed (``synnav predict x.fa >&-``) Python has no ``sys.stdout``:
    the first row written was a TypeError traceback, and the next file opened would take
    descriptor 1. The descriptor is taken by /dev/null instead, and a write to standard output
    is one line (an OSError, below)."""
    if sys.stdout is not None:
        return
    try:
        os.fstat(1)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 1:
            os.close(fd)
    sys.stdout = _ClosedOutput()


class SynnavGroup(click.Group):
    """Turns user errors into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        _guard_closed_stdout()
        try:
            return super().invoke(ctx)
        except UserError as error:
            click.echo(f"Error: {error}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            # The reader went away (`synnav predict ... | head`): not an error worth a traceback.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(0)
        except OSError as error:
            # A full disk, a lost mount, a permission: the environment's to fix, said in one line.
            click.echo(f"Error: {os_error_line(error)}", err=True)
            ctx.exit(1)


def _print_version(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """What click.version_option prints, with the version looked up only when asked for."""
    if not value or ctx.resilient_parsing:
        return
    from synnav_cli import __version__

    click.echo(f"synnav, version {__version__}")
    ctx.exit()


@click.group(
    cls=SynnavGroup, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
def cli() -> None:
    """Predict where proteins go in a neuron (cytosol, ER, mitochondrion, nucleus, excitatory and
    inhibitory synapse) with fine-tuned protein language models."""
    from synnav_cli.runtime.allocator import prefer_expandable_segments
    from synnav_cli.runtime.threads import prepare_openmp

    prefer_expandable_segments()
    prepare_openmp()  # before any option callback imports torch, which loads OpenMP


@cli.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON list instead of a table.  [default: table]",
)
def backbones(as_json: bool) -> None:
    """List the backbones the plugin registry holds."""
    from synnav_cli.cli.views import backbone_rows, format_backbones
    from synnav_cli.plugins import DEFAULT_BACKBONE, backbone_registry

    rows = backbone_rows(backbone_registry(), DEFAULT_BACKBONE)
    click.echo(json.dumps(rows, indent=2) if as_json else format_backbones(rows))


@cli.group()
def models() -> None:
    """Trained models in the models directory (SYNNAV_DATA_DIR/models): list them, show one,
    choose the default, push one to the Hugging Face Hub or pull one from it."""


@models.command("list")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON list instead of a table.  [default: table]",
)
def models_list(as_json: bool) -> None:
    """Trained models, newest first, then the bundled one; the default is marked: backbone, data
    and split hashes, test mean F1 and ROC-AUC, and where each came from (trained here, pulled
    from which Hub repository and revision, bundled)."""
    from synnav_cli.cli.views import format_model_list
    from synnav_cli.modeldir import list_models, read_model_info
    from synnav_cli.resources import bundled_model_path

    infos = list_models()
    bundled = bundled_model_path()
    if bundled is not None:
        infos.append(read_model_info(bundled))
    click.echo(format_model_list(infos, default=_default_path(), as_json=as_json), nl=False)


def _default_path() -> Path | None:
    """The default model's directory (what `list` and `show` mark), None when it cannot be read."""
    from synnav_cli.modeldir import resolve_model

    try:
        return resolve_model(None)[0].path.resolve()
    except UserError:
        return None


@models.command("default")
@click.argument("name", required=False)
@click.option("--clear", is_flag=True, help="Go back to the bundled model.  [default: off]")
def models_default(name: str | None, clear: bool) -> None:
    """Set the model `predict` and `evaluate` use without --model: NAME from `synnav models list`,
    a model directory, or `bundled`. Without NAME, print the current default."""
    from synnav_cli.modeldir import resolve_model, set_default_model

    if clear or name:
        info = set_default_model(None if clear else name)
        chosen = info.name if info is not None else "bundled"
        click.echo(f"Default model: {chosen}.", err=True)
        return
    info, _how = resolve_model(None)
    click.echo(f"{info.name}\t{info.path}")


@models.command("show")
@click.argument("name")
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON instead of text.  [default: text]"
)
def models_show(name: str, as_json: bool) -> None:
    """Everything about model NAME (a name from `synnav models list`, or a model directory):
    thresholds, per-label test metrics, data, config and versions."""
    from synnav_cli.cli.views import format_model_details
    from synnav_cli.modeldir import resolve_model

    info, _how = resolve_model(name)
    click.echo(format_model_details(info, default=_default_path(), as_json=as_json), nl=False)


# Each verb lives in the module of its stage; the group gathers them here.
from synnav_cli.cli import evaluate, predict, train, variants  # noqa: E402
from synnav_cli.cli.cache import cache_group  # noqa: E402
from synnav_cli.cli.report import report  # noqa: E402
from synnav_cli.cli.sharing import models_pull, models_push  # noqa: E402

models.add_command(models_push)
models.add_command(models_pull)
for command in (
    train.train,
    evaluate.evaluate,
    predict.predict,
    evaluate.calibrate,
    variants.variants,
    train.split,
    predict.merge,
    predict.embed,
    report,
    cache_group,
):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="synnav")
