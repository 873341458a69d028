"""``synnav variants``: score protein variants against their reference."""

from __future__ import annotations

from pathlib import Path

import click

from synnav_cli.cli.options import common_options, precision_option
from synnav_cli.errors import UserError


@click.command()
@click.argument("fasta", metavar="REFERENCE.fasta")
@click.argument("variants_file", metavar="VARIANTS")
@click.option(
    "--model",
    "-m",
    default=None,
    help="Model directory or name.  "
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
    help="Write tsv text cells as they are, without the ' ahead of one a spreadsheet would run "
    "as a formula (docs/safety.md).  [default: off]",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Write to this file (atomically) instead of stdout; its suffix picks the format and a "
    "compression, as for predict. In input order, run the same command again after an "
    "interruption to continue; with --sort delta it starts again.  [default: stdout]",
)
@click.option(
    "--sort",
    type=click.Choice(["input", "delta"]),
    default="input",
    show_default=True,
    help="Row order: as in VARIANTS, or the largest change first (ties keep input order; rows "
    "not scored last).",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Score the valid variants and give each invalid one a row whose status says why.  "
    "[default: off: every variant is checked against the FASTA first, and one invalid variant "
    "stops the run before anything is scored]",
)
@click.option(
    "--long",
    "long_policy",
    type=click.Choice(["truncate", "window", "skip"]),
    default="truncate",
    show_default=True,
    help="Proteins longer than the model's maximum, as for predict; with truncate a change past "
    "the part scored is said in the status column.",
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
    help="Score only part I of N (variants I, I+N, I+2N, ... counting from 1), e.g. an array "
    "job's task, into --out (plain, input order); join the parts with `synnav merge`.  "
    "[default: every variant]",
)
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Also write, per variant, a TSV of integrated-gradients attributions of the label that "
    "moved most, in the reference and in the variant, lined up residue by residue from 15 "
    "before the change to 15 after, with their difference (docs/variants.md). Costs two "
    "attributions per variant.  [default: no attributions]",
)
@click.option(
    "--explain-steps",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Integration steps per sequence for --explain; more is smoother and slower.",
)
@click.option(
    "--no-domain",
    is_flag=True,
    help="Leave out the variant's applicability-domain columns (nearest_training, identity, "
    "coverage, embedding_distance, domain; docs/interpreting.md) and their cost.  "
    "[default: off: added]",
)
@precision_option
@common_options
def variants(
    fasta: str,
    variants_file: str,
    model: str | None,
    fmt: str | None,
    raw_ids: bool,
    out: Path | None,
    sort: str,
    skip_invalid: bool,
    long_policy: str,
    max_tokens: int | None,
    shard: str | None,
    explain_dir: Path | None,
    explain_steps: int,
    no_domain: bool,
    precision: str,
    device: str,
    offline: bool,
) -> None:
    """Score protein variants: how each changes every label's probability.

    VARIANTS holds one variant a line, in HGVS protein notation: `P04637  p.Arg175His`,
    `P04637  p.R175H`, several changes of one protein (`P04637  p.R175H p.R273H`, or
    `p.[Arg175His;Arg273His]`), `p.Gly12del`, `p.Gly12_Lys15dup`, `p.Lys2_Met3insGln`,
    `p.Cys28delinsTrp`, `p.Arg175=` (no change), `p.Arg175Ter` or `p.R175*` (a truncation), or
    `NP_000537.3:p.Arg175His`. A VCF annotated by VEP (CSQ with HGVSp) or SnpEff (ANN with
    HGVS.p) works too. Every reference residue named is checked against REFERENCE.fasta before
    anything is scored; a reference is scored once, however many variants it has.

    Writes one row per variant: id, variant, length, variant_length, the reference's and the
    variant's probability per label, their difference (delta_<label>, variant - reference),
    largest_change and largest_change_label, status, calibration, and the variant's
    applicability-domain columns as predict writes them (docs/variants.md).

    \b
    Examples:
      synnav variants data/example.fasta data/example-variants.tsv --sort delta
      synnav variants proteome.fasta variants.tsv > effects.tsv
      synnav variants proteome.fasta variants.tsv --sort delta -o ranked.csv
    """
    from synnav_cli.predict.variants import run_variants
    from synnav_cli.predict.writer import output_format

    fmt, compression = output_format(fmt, out)
    if raw_ids and fmt == "csv":
        raise UserError(
            "--raw-ids is for --format tsv; csv, the spreadsheet format, always has the '"
        )
    run_variants(
        fasta,
        variants_file,
        model_name=model,
        fmt=fmt,
        out=out,
        compression=compression,
        sort=sort,
        long_policy=long_policy,
        skip_invalid=skip_invalid,
        max_tokens=max_tokens,
        device=device,
        offline=offline,
        precision=precision,
        raw_ids=raw_ids,
        explain_dir=explain_dir,
        explain_steps=explain_steps,
        shard=shard,
        domain=not no_domain,
    )
