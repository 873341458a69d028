"""``synnav train``: fine-tune a backbone on labelled data; ``synnav split``: homology splits."""

from __future__ import annotations

from pathlib import Path

import click

from synnav_cli import console
from synnav_cli.cli.options import PRECISIONS, common_options, default_dataset


@click.command()
@click.option(
    "--backbone",
    "-b",
    default=None,
    help="Backbone id or alias (see `synnav backbones`).  [default: esmc600m]",
)
@click.option(
    "--data",
    "-d",
    type=click.Path(path_type=Path),
    default=None,
    help="Labelled dataset: dataset.json (origin format), CSV or TSV.  "
    "[default: the bundled data/dataset.json]",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Model directory to create.  [default: <data dir>/models/<backbone>-<time>]",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON config; the origin's keys (batch_size, lr, epochs, precision, loss, ...) work.  "
    "[default: none; options given on the command line win]",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Passes over the training split.  [default: 30]",
)
@click.option(
    "--lr",
    "learning_rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Peak learning rate.  [default: 1e-4]",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Most proteins per step.  [default: 8]",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Padded tokens per batch.  [default: from the device's free memory]",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Numeric precision on GPUs (CPU runs fp32).  [default: auto]",
)
@click.option(
    "--loss",
    type=click.Choice(["a2", "balanced", "unweighted"]),
    default=None,
    help="Class weighting of the BCE loss.  [default: a2]",
)
@click.option(
    "--freeze",
    is_flag=True,
    default=None,
    help="Train the head only, on pooled embeddings cached on disk (a second run on the same "
    "proteins skips the backbone).  [default: off]",
)
@click.option(
    "--grad-checkpoint/--no-grad-checkpoint",
    "gradient_checkpointing",
    default=None,
    help="Recompute activations in the backward pass for every batch (or for none).  "
    "[default: on GPUs, only for batches too large for memory without it]",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Seed for split, initialisation and batch order.  [default: 0]",
)
@click.option(
    "--max-length",
    type=click.IntRange(min=1),
    default=None,
    help="Cut longer proteins to their first N residues.  [default: 1800]",
)
@click.option(
    "--threshold-metric",
    type=click.Choice(["f1", "mcc"]),
    default=None,
    help="Metric maximised on dev to choose each label's threshold.  [default: f1]",
)
@click.option("--force", is_flag=True, help="Replace an existing model directory.  [default: off]")
@click.option(
    "--resume",
    type=click.Path(path_type=Path),
    default=None,
    help="Continue an interrupted run (its <out>.partial directory).  [default: start a new run]",
)
@common_options
def train(
    resume: Path | None,
    data: Path | None,
    out: Path | None,
    config_file: Path | None,
    force: bool,
    device: str,
    offline: bool,
    **options,
) -> None:
    """Fine-tune a backbone on a labelled dataset and save a model directory."""
    from synnav_cli.train.config import TrainConfig, read_config_file
    from synnav_cli.train.run import resume as resume_training
    from synnav_cli.train.run import train as run_training

    if resume is not None:
        result = resume_training(resume, device=device, offline=offline)
    else:
        merged = read_config_file(config_file) if config_file else {}
        merged.update({k: v for k, v in options.items() if v is not None})
        config = TrainConfig(**merged)
        # Validated (and the backbone looked up) here, so a bad value fails before data is read.
        result = run_training(
            config, data or default_dataset(), out, force=force, device=device, offline=offline
        )
    click.echo(str(result.model_dir))


@click.command()
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="File to write: a copy of DATA in the same format, with a new split.  "
    "[default: none; required]",
)
@click.option(
    "--min-seq-id",
    type=click.FloatRange(0, 1),
    default=0.3,
    show_default=True,
    help="Proteins aligned at this identity or more share a cluster, and so a split.",
)
@click.option(
    "--coverage",
    type=click.FloatRange(0, 1),
    default=0.8,
    show_default=True,
    help="Minimum fraction of both proteins the alignment must cover.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the order clusters are dealt to splits.",
)
@click.option(
    "--fractions",
    default="0.7,0.15,0.15",
    show_default=True,
    help="Target train,dev,test fractions.",
)
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="MMseqs2 threads; 1 gives the same clusters on every run.",
)
@click.option(
    "--force", is_flag=True, help="Replace an existing --out file (never DATA).  [default: off]"
)
def split(
    data: Path,
    out: Path,
    min_seq_id: float,
    coverage: float,
    seed: int,
    fractions: str,
    threads: int,
    force: bool,
) -> None:
    """Write a copy of dataset DATA with a homology-aware train/dev/test split.

    Clusters the proteins with MMseqs2 (`apt-get install mmseqs2`) and keeps each cluster in
    one split, so test proteins have no close homologue in training.
    """
    from synnav_cli.data.split import parse_fractions, split_dataset

    result = split_dataset(
        data,
        out,
        min_seq_id=min_seq_id,
        coverage=coverage,
        seed=seed,
        fractions=parse_fractions(fractions),
        threads=threads,
        force=force,
    )
    if result.replaced_split:
        console.info(f"Replaced the split {data} carried.")
    sizes = ", ".join(f"{name} {count}" for name, count in result.sizes.items())
    console.info(
        f"{result.clusters} clusters (MMseqs2 {result.mmseqs_version}, "
        f"{' '.join(result.mmseqs_options)}): {sizes}."
    )
    click.echo(str(result.out))
