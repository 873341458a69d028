"""``synnav predict`` (with ``--compare`` and ``--explain``) and ``synnav merge``."""

from __future__ import annotations

from pathlib import Path

import click

from synnav_cli.cli.options import common_options, precision_option
from synnav_cli.errors import UserError
from synnav_cli.resources import install_hint


@click.command()
@click.argument("fasta", default="-", metavar="FASTA")
@click.option(
    "--model",
    "-m",
    default=None,
    help="Model directory or name, or hf:ORG/NAME[@REVISION] (a model on the Hugging Face Hub, "
    "pulled on first use).  "
    "[default: the one set with `synnav models default`, else the bundled one]",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["tsv", "csv", "jsonl"]),
    default=None,
    help="Output format; with --out it must agree with the file's suffix.  "
    "[default: from --out's suffix, else tsv]",
)
@click.option(
    "--raw-ids",
    is_flag=True,
    help="Write tsv ids and label names as they are. Without it, one that starts with = + - @ "
    "or ' (a spreadsheet would run it as a formula) gets a leading ', as csv always does "
    "(docs/safety.md).  [default: off]",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Write to this file (atomically) instead of stdout. Its suffix picks the format (.tsv, "
    ".txt, .csv, .jsonl) and a compression (.gz, .bz2 or .xz after it: out.tsv.gz); .json is "
    "refused (the rows are JSON lines), another suffix is tsv unless --format says.  "
    "[default: stdout]",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    help="Decision threshold: a number for every label, or LABEL=NUMBER; repeatable. A "
    "probability as the output shows it (calibrated, for a calibrated label).  "
    "[default: the model's tuned thresholds]",
)
@click.option(
    "--long",
    "long_policy",
    type=click.Choice(["truncate", "window", "skip"]),
    default="truncate",
    show_default=True,
    help="Proteins longer than the model's maximum: keep the N-terminal part, pool overlapping "
    "windows into one mean over the residues (for ESM models, not the bundled one: "
    "docs/quickstart.md), or skip (reported in the status column).",
)
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Padded tokens per batch.  [default: from the device]",
)
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Score only part I of N (records I, I+N, I+2N, ... counting from 1), e.g. an array job's "
    "task; join the parts with `synnav merge`.  [default: every record]",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Score the valid records and give each invalid one a row whose status says why.  "
    "[default: off: every record is checked first, and one invalid record stops the run "
    "before anything is scored]",
)
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write per-residue attributions (integrated gradients) of each protein's predicted "
    "labels to this directory: <id>.tsv and an <id>.png track, and summary.tsv with each "
    "label's probability, the baseline's and the attributions' sum (about their difference); "
    "proteins over the model's maximum are explained over their N-terminal part. Needs matplotlib: "
    f"{install_hint('plots')}.  [default: no attributions]",
)
@click.option(
    "--explain-steps",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Integration steps per protein for --explain; more is smoother and slower.",
)
@click.option(
    "--compare",
    is_flag=True,
    help="Print a mutant-versus-wild-type table instead of the per-record rows: one row per record "
    "named <id>_mut... whose wild type <id> is in the input, with each label's wild-type and "
    "mutant probabilities and their change (mutant - wild type), and the mutant's predicted, "
    "gained and lost labels.  "
    "[default: off]",
)
@click.option(
    "--no-domain",
    is_flag=True,
    help="Leave out the applicability-domain columns (nearest_training, identity, coverage, "
    "embedding_distance, domain; docs/interpreting.md) and their cost.  [default: off: added]",
)
@precision_option
@common_options
def predict(
    fasta: str,
    model: str | None,
    fmt: str | None,
    raw_ids: bool,
    out: Path | None,
    thresholds: tuple[str, ...],
    long_policy: str,
    max_tokens: int | None,
    shard: str | None,
    skip_invalid: bool,
    explain_dir: Path | None,
    explain_steps: int,
    compare: bool,
    no_domain: bool,
    precision: str,
    device: str,
    offline: bool,
) -> None:
    """Predict localizations for the proteins in FASTA (a file, or - for stdin).

    Writes one row per record, in input order: id, length, one probability per label, the
    predicted labels (those at or over their threshold), a status (ok, truncated, windowed:N,
    skipped, short for peptides under 20 residues, nucleotide for DNA/RNA, or invalid: why), and
    top and top_probability, the most likely label of every scored record, called or not;
    calibration, whether the probabilities are calibrated (calibrated, uncalibrated, or
    calibrated: the labels that are; calls are the same either way); then
    how far each protein is from the training proteins: nearest_training, identity and coverage
    of that protein, embedding_distance, and domain (in, edge, out; unknown for a model without
    a domain index). The thresholds in use are one line on stderr. With --compare the output (stdout or --out) is the
    mutant comparison table instead; --explain adds files and leaves the output as it is.
    """
    from synnav_cli.predict.run import run_prediction
    from synnav_cli.predict.writer import output_format

    fmt, compression = output_format(fmt, out)
    if raw_ids and fmt == "csv":
        raise UserError(
            "--raw-ids is for --format tsv; csv, the spreadsheet format, always has the '"
        )
    if explain_dir is None and not compare:
        run_prediction(
            fasta,
            model_name=model,
            fmt=fmt,
            out=out,
            threshold_values=thresholds,
            long_policy=long_policy,
            max_tokens=max_tokens,
            device=device,
            offline=offline,
            shard=shard,
            skip_invalid=skip_invalid,
            precision=precision,
            raw_ids=raw_ids,
            compression=compression,
            domain=not no_domain,
        )
        return
    if shard is not None:
        raise UserError("--shard works with plain predictions, not with --explain or --compare")
    from synnav_cli.files import check_output_file, readable_twice

    if out is not None:
        check_output_file(out, inputs=[fasta])  # before the model loads, as run_prediction does
    from synnav_cli.scoring.load import load_for_scoring

    if explain_dir is not None:
        from synnav_cli.plots import pyplot

        pyplot()  # a missing matplotlib fails before any model runs
    with readable_twice(fasta) as source:
        loaded = None
        if compare:
            from synnav_cli.predict.compare import run_comparison

            loaded = load_for_scoring(
                model,
                threshold_values=thresholds,
                device=device,
                max_tokens=max_tokens,
                offline=offline,
                precision=precision,
            )
            run_comparison(
                loaded,
                source,
                fmt=fmt,
                out=out,
                long_policy=long_policy,
                raw_ids=raw_ids,
                compression=compression,
            )
        else:
            run_prediction(
                source,
                model_name=model,
                fmt=fmt,
                out=out,
                threshold_values=thresholds,
                long_policy=long_policy,
                max_tokens=max_tokens,
                device=device,
                offline=offline,
                skip_invalid=skip_invalid,
                precision=precision,
                raw_ids=raw_ids,
                compression=compression,
                domain=not no_domain,
            )
        if explain_dir is not None:
            from synnav_cli.modeldir import resolve_model
            from synnav_cli.predict.explain import write_explanations
            from synnav_cli.scoring.load import open_model

            # The predictions above said which model they used; it is not said twice.
            loaded = loaded or open_model(
                resolve_model(model, offline=offline)[0],
                threshold_values=thresholds,
                device=device,
                max_tokens=max_tokens,
                offline=offline,
                precision=precision,
            )
            write_explanations(loaded, source, explain_dir, steps=explain_steps)


@click.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Write to this file (atomically) instead of stdout.  [default: stdout]",
)
@click.option(
    "--fasta",
    "fasta",
    default=None,
    help="The FASTA the parts were predicted from: every row's id is checked against it. Needed "
    "for parts that do not record their shard (written to stdout).  [default: the shard records]",
)
def merge(parts: tuple[Path, ...], out: Path | None, fasta: str | None) -> None:
    """Join `synnav predict --shard I/N` or `synnav embed --shard I/N` outputs into one file in
    input order.

    Give the PARTS in shard order, 1/N first (name them so that a glob sorts them, e.g. part-01
    ... part-12). tsv and csv parts keep one header. `predict --shard I/N --out PART` writes
    PART.shard.json beside each part (its shard, hashes of the input and of the part, the model
    and options), so a missing, repeated, changed or misplaced part, or one of another run, is
    refused in one line. Parts without it (predicted to stdout) need --fasta, which checks every
    row's id: a missing part is an error, never a silently wrong file.

    Embedding parts (.npz, .h5, .parquet) need --out, whose suffix picks the merged file's
    format. Each part records its shard and a hash of the input, so parts of different inputs,
    shard counts or models are refused.

    \b
    Examples:
      synnav merge part-1.tsv part-2.tsv part-3.tsv --fasta proteome.fasta --out all.tsv
      synnav merge emb-1.h5 emb-2.h5 --out proteome.h5
    """
    from synnav_cli.predict.embed_files import FORMATS

    if any(Path(part).suffix.lower() in FORMATS for part in parts):
        from synnav_cli.predict.embed_merge import merge_embeddings

        if out is None:
            raise UserError("embedding parts merge into a file: give --out (.npz, .h5, .parquet)")
        merge_embeddings(list(parts), out, fasta)
        return
    from synnav_cli.files import output_handle
    from synnav_cli.predict.resumable import merge_parts

    expected = None
    if fasta is not None:
        from synnav_cli.data.fasta import read_fasta

        expected = (record.id for record in read_fasta(fasta))
    with output_handle(out, inputs=[*parts, *([fasta] if fasta else [])]) as handle:
        merge_parts(list(parts), handle, expected)


@click.command()
@click.argument("fasta", default="-", metavar="FASTA")
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    required=True,
    help="The file to write; its suffix picks the format: .npz, .h5 (or .hdf5; needs h5py: "
    f"{install_hint('hdf5')}) or .parquet (needs pyarrow: {install_hint('parquet')}). Run the "
    "same command again after an interruption to continue.  [default: none; required]",
)
@click.option(
    "--backbone",
    "-b",
    "backbone_name",
    default=None,
    help="Embed with this backbone's pretrained encoder (see `synnav backbones`).  "
    "[default: none; give --backbone or --model]",
)
@click.option(
    "--model",
    "-m",
    "model_name",
    default=None,
    help="Embed with the encoder of this trained model (name, directory, or hf:ORG/NAME[@REV]).  "
    "[default: none; give --backbone or --model]",
)
@click.option(
    "--per-residue",
    is_flag=True,
    help="Also write every residue's vector (residue_embeddings, with offsets).  [default: off]",
)
@click.option("--float16", is_flag=True, help="Store the vectors as float16.  [default: float32]")
@click.option(
    "--max-tokens",
    type=click.IntRange(min=1),
    default=None,
    help="Padded tokens per batch.  [default: from the device's free memory]",
)
@precision_option
@click.option(
    "--shard",
    default=None,
    metavar="I/N",
    help="Embed only part I of N (records I, I+N, I+2N, ... counting from 1), e.g. an array "
    "job's task; join the parts with `synnav merge`.  [default: every record]",
)
@common_options
def embed(
    fasta: str,
    out: Path,
    backbone_name: str | None,
    model_name: str | None,
    per_residue: bool,
    float16: bool,
    max_tokens: int | None,
    precision: str,
    shard: str | None,
    device: str,
    offline: bool,
) -> None:
    """Write per-protein embeddings of FASTA (a file, or - for stdin) to an .npz, .h5 or .parquet
    file.

    The file holds ids, lengths, embeddings [proteins, dim] (the mean over each protein's
    residues, what the localization head reads) and, with --per-residue, every residue's vector
    (docs/embeddings.md shows each layout). Records are checked first, as for predict; order is
    the input's. Runs under torchrun as predict does; finished chunks wait in FILE.partial/, so
    an interrupted run continues where it stopped.

    \b
    Examples:
      synnav embed proteome.fasta -b esmc600m -o proteome.h5 --float16
      synnav embed proteome.fasta -b esmc600m --shard 3/16 -o emb-03.npz
    """
    from synnav_cli.predict.embed import run_embedding

    run_embedding(
        fasta,
        out,
        backbone_name=backbone_name,
        model_name=model_name,
        per_residue=per_residue,
        float16=float16,
        max_tokens=max_tokens,
        device=device,
        offline=offline,
        precision=precision,
        shard=shard,
    )
