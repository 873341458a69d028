"""The ``synnav`` command line: parse options, call typed functions, print results."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from synnav_cli import __version__, console
from synnav_cli.errors import UserError
from synnav_cli.runtime import hardware

EXAMPLES = """
\b
Examples:
  synnav predict proteome.fasta > out.tsv
  cat proteins.fasta | synnav predict - --format jsonl
  synnav train --backbone esmc600m --data data/dataset.json
  synnav evaluate --model esmc600m-20261125-101500 --data data/dataset.json
  synnav backbones --json
"""


class SynnavGroup(click.Group):
    """Turns user errors into one line on stderr and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
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
            where = f": {error.filename}" if error.filename else ""
            click.echo(f"Error: {error.strerror or error}{where}", err=True)
            ctx.exit(1)


def _verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        console.set_verbosity(quiet=param.name == "quiet", verbose=param.name == "verbose")
    return value


def common_options(function):
    """--device, --offline, --quiet and --verbose, shared by the commands that run models."""
    function = click.option("--verbose", "-v", is_flag=True, expose_value=False, callback=_verbosity,
                            help="Say more on stderr.  [default: off]")(function)
    function = click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_verbosity,
                            help="Say nothing on stderr but errors and warnings.  [default: off]")(function)
    function = click.option("--offline", is_flag=True, envvar="SYNNAV_OFFLINE",
                            help="Never download weights; use the cache only.  [default: off; env: SYNNAV_OFFLINE]")(function)
    function = click.option("--device", default="auto", show_default=True,
                            help="auto, cpu, cuda, cuda:N or mps.")(function)
    return function


@click.group(cls=SynnavGroup, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="synnav")
def cli() -> None:
    """Predict where proteins go in a neuron (cytosol, ER, mitochondrion, nucleus, excitatory and
    inhibitory synapse) with fine-tuned protein language models."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.  [default: table]")
def backbones(as_json: bool) -> None:
    """List the backbones the plugin registry holds."""
    from synnav_cli.cli.views import backbone_rows, format_backbones
    from synnav_cli.plugins import DEFAULT_BACKBONE, backbone_registry

    rows = backbone_rows(backbone_registry(), DEFAULT_BACKBONE)
    click.echo(json.dumps(rows, indent=2) if as_json else format_backbones(rows))


@cli.command()
@click.option("--backbone", "-b", default=None, help="Backbone id or alias (see `synnav backbones`).  [default: esmc600m]")
@click.option("--data", "-d", type=click.Path(path_type=Path), default=None,
              help="Labelled dataset: dataset.json (origin format), CSV or TSV.  [default: the bundled data/dataset.json]")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Model directory to create.  [default: <data dir>/models/<backbone>-<time>]")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
              help="JSON config; the origin's keys (batch_size, lr, epochs, precision, loss, ...) work.  "
                   "[default: none; options given on the command line win]")
@click.option("--epochs", type=int, default=None, help="Passes over the training split.  [default: 30]")
@click.option("--lr", "learning_rate", type=float, default=None, help="Peak learning rate.  [default: 1e-4]")
@click.option("--batch-size", type=int, default=None, help="Most proteins per step.  [default: 8]")
@click.option("--max-tokens", type=int, default=None,
              help="Padded tokens per batch.  [default: from the device's free memory]")
@click.option("--precision", type=click.Choice(hardware.PRECISIONS), default=None,
              help="Numeric precision on GPUs (CPU runs fp32).  [default: auto]")
@click.option("--loss", type=click.Choice(["a2", "balanced", "unweighted"]), default=None,
              help="Class weighting of the BCE loss.  [default: a2]")
@click.option("--freeze", is_flag=True, default=None, help="Train the head only, on pooled embeddings cached on disk (a second run on the same proteins skips the backbone).  [default: off]")
@click.option("--grad-checkpoint/--no-grad-checkpoint", "gradient_checkpointing", default=None,
              help="Recompute activations in the backward pass for every batch (or for none).  "
                   "[default: on GPUs, only for batches too large for memory without it]")
@click.option("--seed", type=int, default=None, help="Seed for split, initialisation and batch order.  [default: 0]")
@click.option("--max-length", type=int, default=None, help="Cut longer proteins to their first N residues.  [default: 1800]")
@click.option("--threshold-metric", type=click.Choice(["f1", "mcc"]), default=None,
              help="Metric maximised on dev to choose each label's threshold.  [default: f1]")
@click.option("--force", is_flag=True, help="Replace an existing model directory.  [default: off]")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue an interrupted run (its <out>.partial directory).  [default: start a new run]")
@common_options
def train(resume: Path | None, data: Path | None, out: Path | None, config_file: Path | None, force: bool,
          device: str, offline: bool, **options) -> None:
    """Fine-tune a backbone on a labelled dataset and save a model directory."""
    from synnav_cli.train.config import TrainConfig, read_config_file
    from synnav_cli.train.loop import resume as resume_training
    from synnav_cli.train.loop import train as run_training

    if resume is not None:
        result = resume_training(resume, device=device, offline=offline)
    else:
        merged = read_config_file(config_file) if config_file else {}
        merged.update({k: v for k, v in options.items() if v is not None})
        config = TrainConfig(**merged)
        # Validated (and the backbone looked up) here, so a bad value fails before data is read.
        result = run_training(config, data or _bundled_dataset(), out, force=force, device=device, offline=offline)
    click.echo(str(result.model_dir))


def _bundled_dataset() -> Path:
    from synnav_cli.resources import bundled_dataset_path

    path = bundled_dataset_path()
    if path is None:
        raise UserError("no --data given and this installation ships no dataset")
    console.info(f"Using the bundled dataset {path}.")
    return path


@cli.command()
@click.option("--model", "-m", "models", multiple=True,
              help="Model directory or name; repeat to compare models.  [default: the newest model]")
@click.option("--data", "-d", type=click.Path(path_type=Path), default=None,
              help="Labelled dataset.  [default: the bundled data/dataset.json]")
@click.option("--split", type=click.Choice(["train", "dev", "test", "all"]), default="test", show_default=True,
              help="Which split to score.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "tsv", "markdown"]), default="table",
              show_default=True, help="Output format.")
@click.option("--max-tokens", type=int, default=None, help="Padded tokens per batch.  [default: from the device]")
@click.option("--plots", "plots_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write ROC and precision-recall curves per label and a metrics bar chart "
                   "(PNG) to this directory; needs `pip install 'synnav[plots]'`.  [default: no figures]")
@common_options
def evaluate(models: tuple[str, ...], data: Path | None, split: str, fmt: str, max_tokens: int | None,
             plots_dir: Path | None, device: str, offline: bool) -> None:
    """Per-label F1, ROC-AUC, PR-AUC and MCC of trained models on a dataset split."""
    from synnav_cli.cli.views import format_evaluation
    from synnav_cli.evaluate import evaluate_with_scores
    from synnav_cli.modeldir import resolve_model

    if plots_dir is not None:
        from synnav_cli.plots import pyplot

        pyplot()  # a missing matplotlib fails before any model runs
    data = data or _bundled_dataset()
    results, scored = [], []
    for name in models or (None,):
        info, _how = resolve_model(name)
        result, scores = evaluate_with_scores(info, data, split=split, device=device, max_tokens=max_tokens,
                                              offline=offline)
        results.append(result)
        scored.append((info.name, result, scores))
    click.echo(format_evaluation(results, fmt), nl=False)
    from synnav_cli.runtime import distributed

    if plots_dir is not None and distributed.is_main():
        from synnav_cli.plots import ModelScores, write_plots

        written = write_plots([ModelScores(*entry) for entry in scored], plots_dir)
        console.info(f"Wrote {len(written)} figures to {plots_dir}.")


@cli.command()
@click.argument("fasta", default="-", metavar="FASTA")
@click.option("--model", "-m", default=None, help="Model directory or name.  [default: the newest trained model, else the bundled one]")
@click.option("--format", "fmt", type=click.Choice(["tsv", "csv", "jsonl"]), default="tsv", show_default=True,
              help="Output format.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Write to this file (atomically) instead of stdout.  [default: stdout]")
@click.option("--threshold", "thresholds", multiple=True,
              help="Decision threshold: a number for every label, or LABEL=NUMBER; repeatable.  "
                   "[default: the model's tuned thresholds]")
@click.option("--long", "long_policy", type=click.Choice(["truncate", "window", "skip"]), default="truncate",
              show_default=True, help="Proteins longer than the model's maximum: keep the N-terminal part, "
                                      "average overlapping windows, or skip (reported in the status column).")
@click.option("--max-tokens", type=int, default=None, help="Padded tokens per batch.  [default: from the device]")
@click.option("--shard", default=None, metavar="I/N",
              help="Score only part I of N (records I, I+N, I+2N, ... counting from 1), e.g. an array job's "
                   "task; join the parts with `synnav merge`.  [default: every record]")
@click.option("--explain", "explain_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write per-residue attributions (integrated gradients) of each protein's predicted "
                   "labels to this directory: <id>.tsv and an <id>.png track; proteins over the model's "
                   "maximum are explained over their N-terminal part. Needs `pip install 'synnav[plots]'`.  "
                   "[default: no attributions]")
@click.option("--explain-steps", type=int, default=32, show_default=True,
              help="Integration steps per protein for --explain; more is smoother and slower.")
@click.option("--compare", is_flag=True,
              help="Print a mutant-versus-wild-type table instead of the per-record rows: one row per record "
                   "named <id>_mut... whose wild type <id> is in the input, with the change in each label's "
                   "probability (mutant - wild type) and the mutant's predicted, gained and lost labels.  "
                   "[default: off]")
@common_options
def predict(fasta: str, model: str | None, fmt: str, out: Path | None, thresholds: tuple[str, ...],
            long_policy: str, max_tokens: int | None, shard: str | None, explain_dir: Path | None,
            explain_steps: int, compare: bool, device: str, offline: bool) -> None:
    """Predict localizations for the proteins in FASTA (a file, or - for stdin).

    Writes one row per record, in input order: id, length, one probability per label, the
    predicted labels and a status (ok, truncated, windowed:N or skipped). With --compare the
    output (stdout or --out, in --format) is the mutant comparison table instead; --explain adds
    files and leaves the output as it is.
    """
    from synnav_cli.predict.run import run_prediction

    if explain_dir is None and not compare:
        run_prediction(fasta, model_name=model, fmt=fmt, out=out, threshold_values=thresholds,
                       long_policy=long_policy, max_tokens=max_tokens, device=device, offline=offline,
                       shard=shard)
        return
    if shard is not None:
        raise UserError("--shard works with plain predictions, not with --explain or --compare")
    from synnav_cli.files import readable_twice
    from synnav_cli.scoring.load import load_for_scoring

    if explain_dir is not None:
        from synnav_cli.plots import pyplot

        pyplot()  # a missing matplotlib fails before any model runs
    with readable_twice(fasta) as source:
        loaded = None
        if compare:
            from synnav_cli.predict.compare import run_comparison

            loaded = load_for_scoring(model, threshold_values=thresholds, device=device, max_tokens=max_tokens,
                                      offline=offline)
            run_comparison(loaded, source, fmt=fmt, out=out, long_policy=long_policy)
        else:
            run_prediction(source, model_name=model, fmt=fmt, out=out, threshold_values=thresholds,
                           long_policy=long_policy, max_tokens=max_tokens, device=device, offline=offline)
        if explain_dir is not None:
            from synnav_cli.predict.explain import write_explanations

            loaded = loaded or load_for_scoring(model, threshold_values=thresholds, device=device,
                                                max_tokens=max_tokens, offline=offline)
            write_explanations(loaded, source, explain_dir, steps=explain_steps)


@cli.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True,
              help="File to write: a copy of DATA in the same format, with a new split.  [default: none; required]")
@click.option("--min-seq-id", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Proteins aligned at this identity or more share a cluster, and so a split.")
@click.option("--coverage", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Minimum fraction of both proteins the alignment must cover.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the order clusters are dealt to splits.")
@click.option("--fractions", default="0.7,0.15,0.15", show_default=True, help="Target train,dev,test fractions.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="MMseqs2 threads; 1 gives the same clusters on every run.")
@click.option("--force", is_flag=True, help="Replace an existing --out file (never DATA).  [default: off]")
def split(data: Path, out: Path, min_seq_id: float, coverage: float, seed: int, fractions: str, threads: int,
          force: bool) -> None:
    """Write a copy of dataset DATA with a homology-aware train/dev/test split.

    Clusters the proteins with MMseqs2 (`apt-get install mmseqs2`) and keeps each cluster in
    one split, so test proteins have no close homologue in training.
    """
    from synnav_cli.data.split import parse_fractions, split_dataset

    result = split_dataset(data, out, min_seq_id=min_seq_id, coverage=coverage, seed=seed,
                           fractions=parse_fractions(fractions), threads=threads, force=force)
    if result.replaced_split:
        console.info(f"Replaced the split {data} carried.")
    sizes = ", ".join(f"{name} {count}" for name, count in result.sizes.items())
    console.info(f"{result.clusters} clusters (MMseqs2 {result.mmseqs_version}, "
                 f"{' '.join(result.mmseqs_options)}): {sizes}.")
    click.echo(str(result.out))


@cli.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "-o", type=click.Path(path_type=Path), default=None,
              help="Write to this file (atomically) instead of stdout.  [default: stdout]")
@click.option("--fasta", "fasta", default=None,
              help="The FASTA the parts were predicted from: every row's id is checked against it, which "
                   "catches a missing or misplaced part whatever the row counts.  [default: counts only]")
def merge(parts: tuple[Path, ...], out: Path | None, fasta: str | None) -> None:
    """Join `synnav predict --shard I/N` outputs into one file in input order.

    Give the PARTS in shard order, 1/N first (name them so that a glob sorts them, e.g. part-01
    ... part-12). tsv and csv parts keep one header. Row counts are checked, and with --fasta
    every row's id: a missing or misplaced part is an error, never a silently wrong file.

    \b
    Example:
      synnav merge part-1.tsv part-2.tsv part-3.tsv --fasta proteome.fasta --out all.tsv
    """
    from synnav_cli.files import output_handle
    from synnav_cli.predict.resumable import merge_parts

    expected = None
    if fasta is not None:
        from synnav_cli.data.fasta import read_fasta

        expected = (record.id for record in read_fasta(fasta))
    with output_handle(out, inputs=[*parts, *([fasta] if fasta else [])]) as handle:
        merge_parts(list(parts), handle, expected)


@cli.group()
def models() -> None:
    """Trained models in the models directory (SYNNAV_DATA_DIR/models): list them, show one."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.  [default: table]")
def models_list(as_json: bool) -> None:
    """Trained models, newest first: backbone, data and split hashes, test mean F1 and ROC-AUC."""
    from synnav_cli.cli.views import format_model_list
    from synnav_cli.modeldir import list_models

    click.echo(format_model_list(list_models(), as_json=as_json), nl=False)


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.  [default: text]")
def models_show(name: str, as_json: bool) -> None:
    """Everything about model NAME (a name from `synnav models list`, or a model directory):
    thresholds, per-label test metrics, data, config and versions."""
    from synnav_cli.cli.views import format_model_details
    from synnav_cli.modeldir import resolve_model

    info, _how = resolve_model(name)
    click.echo(format_model_details(info, as_json=as_json), nl=False)


from synnav_cli.cli.cache import cache_group  # noqa: E402  (a command group of its own module)

cli.add_command(cache_group)


def main() -> None:
    cli(prog_name="synnav")
