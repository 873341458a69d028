"""``synnav report``: a summary of a `synnav predict` output, before its rows are read."""

from __future__ import annotations

import json
from pathlib import Path

import click

from synnav_cli import console
from synnav_cli.resources import install_hint


@click.command()
@click.argument("table", metavar="TABLE")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: a few lines and a table per label; json: the same counts, with a 20-bin "
    "histogram of each label's probabilities.",
)
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write probabilities.png to this directory: one panel per label, the histogram "
    f"of its probabilities; needs {install_hint('plots')}.  [default: no figure]",
)
def report(table: str, fmt: str, plots_dir: Path | None) -> None:
    """Summarise TABLE, a `synnav predict` output (tsv, csv or JSON lines, compressed or not;
    - for standard input): records by status, proteins scored and without any label called, and
    per label the proteins called, the proteins it is the most likely label of, and the mean
    probability.

    \b
    Examples:
      synnav predict proteome.fasta -o out.tsv.gz && synnav report out.tsv.gz
      synnav report out.jsonl --format json --plots figures/
    """
    from synnav_cli.predict.report import format_text, summarise, write_figure

    if plots_dir is not None:
        from synnav_cli.plots import pyplot

        pyplot()  # a missing matplotlib fails before the table is read
    summary = summarise(table)
    if fmt == "json":
        click.echo(json.dumps(summary.as_dict(), indent=2))
    else:
        click.echo(format_text(summary), nl=False)
    if plots_dir is not None:
        console.info(f"Wrote {write_figure(summary, plots_dir)}.")
