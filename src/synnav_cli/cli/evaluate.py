"""``synnav evaluate``: metrics of trained models on a dataset split, tables and plots."""

from __future__ import annotations

from pathlib import Path

import click

from synnav_cli import console
from synnav_cli.cli.options import common_options, default_dataset, precision_option
from synnav_cli.resources import install_hint


@click.command()
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    help="Model directory or name, or hf:ORG/NAME[@REVISION] (pulled on first use); repeat to "
    "compare models.  "
    "[default: the one set with `synnav models default`, else the bundled one]",
)
@click.option(
    "--data",
    "-d",
    type=click.Path(path_type=Path),
    default=None,
    help="Labelled dataset.  [default: the bundled data/dataset.json]",
)
@click.option(
    "--split",
    type=click.Choice(["train", "dev", "test", "all"]),
    default="test",
    show_default=True,
    help="Which split to score.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "tsv", "markdown"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Padded tokens per batch.  [default: from the device]",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write ROC and precision-recall curves per label and a metrics bar chart "
    f"(PNG) to this directory; needs {install_hint('plots')}.  [default: no figures]",
)
@precision_option
@common_options
def evaluate(
    models: tuple[str, ...],
    data: Path | None,
    split: str,
    fmt: str,
    max_tokens: int | None,
    plots_dir: Path | None,
    precision: str,
    device: str,
    offline: bool,
) -> None:
    """Per-label F1, ROC-AUC, PR-AUC and MCC of trained models on a dataset split."""
    from synnav_cli.cli.views import format_evaluation
    from synnav_cli.evaluate import evaluate_with_scores
    from synnav_cli.modeldir import resolve_model

    if plots_dir is not None:
        from synnav_cli.plots import pyplot

        pyplot()  # a missing matplotlib fails before any model runs
    data = data or default_dataset()
    results, scored = [], []
    for name in models or (None,):
        info, _how = resolve_model(name, offline=offline)
        result, scores = evaluate_with_scores(
            info,
            data,
            split=split,
            device=device,
            max_tokens=max_tokens,
            offline=offline,
            precision=precision,
        )
        results.append(result)
        scored.append((info.name, result, scores))
    click.echo(format_evaluation(results, fmt), nl=False)
    from synnav_cli.runtime import distributed

    if plots_dir is not None and distributed.is_main():
        from synnav_cli.plots import ModelScores, write_plots

        written = write_plots([ModelScores(*entry) for entry in scored], plots_dir)
        console.info(f"Wrote {len(written)} figures to {plots_dir}.")
