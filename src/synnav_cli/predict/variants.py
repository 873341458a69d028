"""``synnav variants``: how protein changes move each label's probability.

Every variant is checked against its reference in the FASTA before anything is scored. Each
distinct sequence (a reference, a variant) is scored once, through the same chunked scoring
``predict`` uses, so a no-change variant (``p.Arg123=``) gets a difference of exactly 0 and a
reference shared by a thousand variants costs one protein.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from synnav_cli import console
from synnav_cli.data.fasta import FastaRecord, check_input, read_fasta
from synnav_cli.data.hgvs import apply_changes
from synnav_cli.data.variants import Variant, read_variants
from synnav_cli.errors import UserError
from synnav_cli.files import check_output_file, input_name, output_handle
from synnav_cli.predict.run import CHUNK_RECORDS, LONG_POLICIES, predict_chunks
from synnav_cli.predict.variant_rows import SORTS, VariantRow, sort_rows, write_rows
from synnav_cli.predict.writer import Prediction
from synnav_cli.scoring.load import LoadedModel, load_for_scoring


def check_variants(
    variants: list[Variant], fasta: str | Path
) -> tuple[dict[str, str], dict[int, str]]:
    """Check every variant against its reference in ``fasta`` (read once, streaming; only the
    references named are kept): each gets its problem set, or its ``changes`` are known to
    apply. Returns the references by the names variants use, and each valid variant's sequence
    by its line."""
    wanted = {v.id for v in variants if v.problem is None}
    found: dict[str, FastaRecord] = {}
    for record in read_fasta(fasta, keep_invalid=True):
        for name in _names(record.id):
            if name in wanted and name not in found:
                found[name] = record
    sequences = {}
    for variant in variants:
        if variant.problem is not None:
            continue
        record = found.get(variant.id)
        if record is None:
            variant.problem = f"{variant.id} is not in {input_name(fasta)}"
        elif record.problem is not None:
            variant.problem = f"its reference {variant.id} is invalid: {record.problem}"
        else:
            try:
                sequences[variant.line] = apply_changes(record.sequence, variant.changes, variant.id)
            except UserError as error:
                variant.problem = str(error)
    references = {
        v.id: found[v.id].sequence for v in variants if v.problem is None
    }
    return references, sequences


def _names(record_id: str) -> list[str]:
    """The names a FASTA record answers to: its id, and the accession of a UniProt
    ``sp|P04637|P53_HUMAN`` id, which is how variant tables name proteins."""
    parts = record_id.split("|")
    if len(parts) == 3 and parts[0] in ("sp", "tr"):
        return [record_id, parts[1]]
    return [record_id]


def refusal(variants: list[Variant], label: str) -> str | None:
    """One line naming the first invalid variant, and how many there are; None when none is."""
    invalid = [v for v in variants if v.problem is not None]
    if not invalid:
        return None
    first = invalid[0]
    return (
        f"line {first.line:,} of {label} ({first.id} {first.notation}): {first.problem} "
        f"[{len(invalid):,} of {len(variants):,} variants invalid; nothing was scored; "
        "--skip-invalid scores the rest]"
    )


def score_variants(
    loaded: LoadedModel,
    variants: list[Variant],
    references: dict[str, str],
    sequences: dict[int, str],
    *,
    long_policy: str = "truncate",
    progress=None,
) -> list[VariantRow]:
    """One row per variant in input order; each distinct sequence among the references and the
    variants is scored once."""
    distinct: dict[str, int] = {}
    for variant in variants:
        if variant.problem is None:
            distinct.setdefault(references[variant.id], len(distinct))
            distinct.setdefault(sequences[variant.line], len(distinct))
    records = [FastaRecord(str(i), "", sequence) for sequence, i in distinct.items()]
    if progress is not None:
        progress.total = len(records)
    scored: list[Prediction] = []
    for chunk in predict_chunks(
        loaded.model,
        loaded.backbone,
        records,
        loaded.runtime,
        max_length=loaded.max_length,
        long_policy=long_policy,
        chunk_records=CHUNK_RECORDS,
        progress=progress,
    ):
        scored.extend(chunk)
    rows = []
    for variant in variants:
        if variant.problem is not None:
            rows.append(VariantRow(variant, None, None))
            continue
        reference = scored[distinct[references[variant.id]]]
        changed = scored[distinct[sequences[variant.line]]]
        rows.append(VariantRow(variant, reference, changed, site=_first_site(variant)))
    return rows


def _first_site(variant: Variant) -> int | None:
    return min((c.start for c in variant.changes), default=None)


def run_variants(
    fasta: str,
    variants_file: str,
    *,
    model_name: str | None = None,
    fmt: str = "tsv",
    out: Path | None = None,
    compression: str | None = None,
    sort: str = "input",
    long_policy: str = "truncate",
    skip_invalid: bool = False,
    max_tokens: int | None = None,
    device: str = "auto",
    offline: bool = False,
    precision: str = "auto",
    raw_ids: bool = False,
) -> int:
    """Score every variant in ``variants_file`` against its reference in ``fasta``; write one
    row per variant to ``out`` (or stdout). Returns the number of variants written.

    Arguments:
        fasta: the reference proteins (a path; gzip, bzip2 or xz too).
        variants_file: a variant table or an annotated VCF (see :mod:`synnav_cli.data.variants`).
        model_name: model directory or name; None: the default model, else the bundled one.
        fmt: tsv, csv or jsonl; ``compression``: gzip, bzip2 or xz for ``out``.
        sort: ``input`` (input order) or ``delta`` (largest change first; ties keep input order).
        long_policy: truncate, window or skip, as for predict.
        skip_invalid: score the valid variants and give each invalid one a row whose status says
            why; without it one invalid variant stops the run before the model loads.
        max_tokens, device, offline, precision: as for predict.
        raw_ids: tsv text cells as they are (see ``writer.text_cells``).
    """
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}; choose {', '.join(SORTS)}")
    if long_policy not in LONG_POLICIES:
        raise UserError(f"unknown long-protein policy {long_policy!r}")
    for source in (fasta, variants_file):
        if str(source) == "-":
            raise UserError("variants reads files: give the FASTA and the variants as paths")
        check_input(source)
    if out is not None:
        check_output_file(out, inputs=[fasta, variants_file])
    variants = read_variants(variants_file)
    references, sequences = check_variants(variants, fasta)
    problem = refusal(variants, input_name(variants_file))
    if problem is not None and not skip_invalid:
        raise UserError(problem)
    if problem is not None:
        invalid = sum(v.problem is not None for v in variants)
        console.warn(
            f"{invalid:,} of {len(variants):,} variants are invalid; their rows say why in the "
            "status column"
        )
    loaded = load_for_scoring(
        model_name, device=device, max_tokens=max_tokens, offline=offline, precision=precision
    )
    with ExitStack() as stack:
        progress = console.Progress(None, "variants", unit="sequences")
        stack.callback(progress.close)
        rows = score_variants(
            loaded, variants, references, sequences, long_policy=long_policy, progress=progress
        )
    rows = sort_rows(rows, sort, loaded.thresholds)
    with output_handle(out, inputs=[fasta, variants_file], compression=compression) as handle:
        write_rows(
            rows, handle, fmt, loaded.info.label_names, loaded.thresholds, loaded.max_length,
            raw_ids=raw_ids,
        )  # fmt: skip
    console.detail(f"{len(rows)} variants scored")
    return len(rows)


def not_supported(option: str, instead: str = "") -> UserError:
    """The one line for an option ``variants`` does not support yet."""
    return UserError(f"variants {option} is not supported yet{instead}")
