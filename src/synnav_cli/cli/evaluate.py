"""``synnav evaluate``: metrics of trained models on a dataset split, tables and plots."""

from __future__ import annotations

from pathlib import Path

import click

from synnav_cli import console
from synnav_cli.cli.options import common_options, default_dataset, precision_option
from synnav_cli.errors import UserError
from synnav_cli.resources import install_hint


def shift_dataset() -> Path:
    """The source-shift set shipped with the package (data/shift.json): --shift's dataset."""
    from synnav_cli.resources import bundled_shift_path

    path = bundled_shift_path()
    if path is None:
        raise UserError("this installation ships no source-shift set (data/shift.json)")
    return path


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
    "datasets",
    type=click.Path(path_type=Path),
    multiple=True,
    help="Labelled dataset; repeat to score each, side by side.  "
    "[default: the bundled data/dataset.json]",
)
@click.option(
    "--shift",
    is_flag=True,
    help="Also score the bundled source-shift set (data/shift.json: compartment labels from GO "
    "and OpenCell, another source than the training data's) on the same split, beside the "
    "rest.  [default: off]",
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
    help="Also write ROC, precision-recall and reliability (calibration) curves per label "
    "and a metrics bar chart "
    f"(PNG) to this directory; needs {install_hint('plots')}.  [default: no figures]",
)
@precision_option
@common_options
def evaluate(
    models: tuple[str, ...],
    datasets: tuple[Path, ...],
    shift: bool,
    split: str,
    fmt: str,
    max_tokens: int | None,
    plots_dir: Path | None,
    precision: str,
    device: str,
    offline: bool,
) -> None:
    """Per-label F1, ROC-AUC, PR-AUC, MCC and calibration error of trained models on a split.

    ece_raw is the expected calibration error (10 equal-width bins) of the model's scores; ece
    is that of the probabilities `predict` writes, which differ only for a model with a
    calibration (`synnav calibrate`, or fitted by `synnav train`).

    With several datasets (--data twice, or --shift) each model gets a column group per
    dataset, named MODEL/DATASET (the file's name without its suffix; with as many of its
    folders in front as it takes to tell two files of one name apart).

    \b
      synnav evaluate --split test --shift     # the test split beside labels of another source
    """
    from synnav_cli.cli.views import format_evaluation
    from synnav_cli.evaluate import evaluate_with_scores
    from synnav_cli.modeldir import resolve_model

    if plots_dir is not None:
        from synnav_cli.plots import pyplot

        pyplot()  # a missing matplotlib fails before any model runs
    from synnav_cli.cli.views import evaluation_by_column

    paths = list(datasets) or [default_dataset()]
    if shift:
        paths.append(shift_dataset())
    for path in paths:  # a missing file fails before any model runs
        if not path.is_file():
            raise UserError(f"no dataset at {path}")
    names = dataset_names(paths)
    results, scored = [], []
    for name in models or (None,):
        info, _how = resolve_model(name, offline=offline)
        for path, dataset_name in zip(paths, names):
            result, scores = evaluate_with_scores(
                info,
                path,
                split=split,
                device=device,
                max_tokens=max_tokens,
                offline=offline,
                precision=precision,
            )
            # Labels as predict's columns spell them (excitatory_synapse): one spelling to join.
            result, scores = evaluation_by_column(result, scores)
            result["data"] = str(path)
            if len(paths) > 1:
                result["name"] = f"{info.name}/{dataset_name}"
            results.append(result)
            scored.append((result["name"], result, scores))
    click.echo(format_evaluation(results, fmt), nl=False)
    from synnav_cli.runtime import distributed

    if plots_dir is not None and distributed.is_main():
        from synnav_cli.plots import ModelScores, write_plots

        written = write_plots([ModelScores(*entry) for entry in scored], plots_dir)
        console.info(f"Wrote {len(written)} figures to {plots_dir}.")


def dataset_names(paths: list[Path]) -> list[str]:
    """A column-group name per dataset file: its name without suffixes (``shift`` for
    ``data/shift.json``), led by as many of its folders as it takes to tell files of one name
    apart (``a/data``, ``b/data``). The same file twice is a UserError: its columns would be
    the same figures under one name."""
    resolved = [path.resolve() for path in paths]
    for index, path in enumerate(resolved):
        if path in resolved[:index]:
            raise UserError(f"dataset {paths[index]} is given twice")
    parts = [path.parts for path in resolved]
    depths = [1] * len(parts)

    def name(index: int) -> str:
        folders = parts[index][-depths[index] : -1]
        return "/".join((*folders, parts[index][-1].split(".")[0]))

    while True:
        names = [name(index) for index in range(len(parts))]
        clashing = [i for i, n in enumerate(names) if names.count(n) > 1]
        growable = [i for i in clashing if depths[i] < len(parts[i]) - 1]
        if not growable:  # one folder, names that differ only in suffix: the paths as given
            return [str(paths[i]) if i in clashing else n for i, n in enumerate(names)]
        for index in growable:
            depths[index] += 1


@click.command()
@click.option(
    "--model",
    "-m",
    "model",
    default=None,
    help="Model directory or name to calibrate.  "
    "[default: the one set with `synnav models default`, else the bundled one]",
)
@click.option(
    "--data",
    "-d",
    type=click.Path(path_type=Path),
    default=None,
    help="Labelled dataset whose dev split is fitted.  [default: the bundled data/dataset.json]",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="Model directory to write: the model, with the calibration in its metadata.  "
    "[default: none; required]",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "temperature", "platt", "isotonic"]),
    default="auto",
    show_default=True,
    help="Map per label; auto picks, per label, the one with the lowest cross-validated "
    "Brier score on dev.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing model directory at --out (the model's own too).  [default: off]",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Padded tokens per batch.  [default: from the device]",
)
@precision_option
@common_options
def calibrate(
    model: str | None,
    data: Path | None,
    out: Path,
    method: str,
    force: bool,
    max_tokens: int | None,
    precision: str,
    device: str,
    offline: bool,
) -> None:
    """Fit calibrated probabilities on the dev split and save the model with them.

    Per label, the model's scores are mapped through a temperature, a Platt map or isotonic
    regression fitted on dev, so that 0.8 means about 80% of such calls are right on proteins
    like dev's. Weights and thresholds are copied unchanged: the calls stay the same, and the
    output's calibration column says which probabilities are calibrated. `synnav train` fits
    one itself; this command adds or refits one.

    \b
      synnav calibrate --model my-model --out my-model-calibrated
    """
    from synnav_cli.cli.views import format_table
    from synnav_cli.evaluate import calibrate_model
    from synnav_cli.modeldir import resolve_model

    info, _how = resolve_model(model)
    written, dev_ece = calibrate_model(
        info,
        data or default_dataset(),
        out,
        method=method,
        force=force,
        device=device,
        max_tokens=max_tokens,
        offline=offline,
        precision=precision,
    )
    rows = [
        [name, *("n/a" if v is None else f"{v:.3f}" for v in values)]
        for name, values in dev_ece.items()
    ]
    click.echo(format_table(["label", "dev ECE before", "dev ECE after"], rows))
    console.info(f"Saved the calibrated model to {written}.")
