"""``synnav variants``: how protein changes move each label's probability, from files to a
table (stdout, or an ``--out`` file that resumes and shards as predict's do).

Checking and scoring are :mod:`synnav_cli.predict.variant_scoring`; rows,
:mod:`synnav_cli.predict.variant_rows`.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

from synnav_cli import console
from synnav_cli.calibration import calibration_line
from synnav_cli.data.fasta import FastaRecord, check_input, read_fasta
from synnav_cli.data.variants import Variant, read_variants, variant_sequence
from synnav_cli.errors import UserError
from synnav_cli.files import (
    check_output_file,
    exclusive_lock,
    input_name,
    output_handle,
    real_folder,
)
from synnav_cli.predict import domain_rows
from synnav_cli.predict.resumable import ResumableOutput, digest_record
from synnav_cli.predict.run import LONG_POLICIES, model_identity
from synnav_cli.predict.variant_rows import SORTS, VariantRow, VariantWriter, columns, sort_rows
from synnav_cli.predict.variant_scoring import (
    calibrated_labels,
    check_variants,
    count_sequences,
    refusal,
    score_variants,
)
from synnav_cli.runtime import distributed
from synnav_cli.scoring.load import LoadedModel, load_for_scoring


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
    explain_dir: Path | None = None,
    explain_steps: int = 32,
    shard: str | None = None,
    domain: bool = True,
) -> int:
    """Score every variant in ``variants_file`` against its reference in ``fasta``; write one
    row per variant to ``out`` (or stdout). Returns the number of variants written.

    Arguments:
        fasta: the reference proteins (a path; gzip, bzip2 or xz too).
        variants_file: a variant table or an annotated VCF (see :mod:`synnav_cli.data.variants`).
        model_name: model directory or name; None: the default model, else the bundled one.
        fmt: tsv, csv or jsonl; ``compression``: gzip, bzip2 or xz for ``out``.
        out: file to write. With ``sort`` input it is built in ``out.partial`` and continued by
            the same command after an interruption, as predict's; with ``sort`` delta it is
            written when every variant is scored.
        sort: ``input`` (input order) or ``delta`` (largest change first; ties keep input order).
        long_policy: truncate, window or skip, as for predict.
        skip_invalid: score the valid variants and give each invalid one a row whose status says
            why; without it one invalid variant stops the run before the model loads.
        max_tokens, device, offline, precision: as for predict.
        raw_ids: tsv text cells as they are (see ``writer.text_cells``).
        explain_dir: also write, per variant, the attribution difference around its site for
            the label that moved most (:mod:`.variant_explain`), ``explain_steps`` steps each.
        shard: ``I/N`` scores variants I-1, I-1+N, ... only, into ``out`` (needed, plain, in
            input order) with a shard record beside it, for ``synnav merge``. Every variant is
            still checked.
        domain: add the variant's applicability-domain columns (nearest training protein,
            identity, coverage, embedding distance, in/edge/out), as predict's rows have.
    """
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}; choose {', '.join(SORTS)}")
    if long_policy not in LONG_POLICIES:
        raise UserError(f"unknown long-protein policy {long_policy!r}")
    for source in (fasta, variants_file):
        if str(source) == "-":
            raise UserError("variants reads files: give the FASTA and the variants as paths")
        check_input(source)
    shard_index, shard_count = distributed.parse_shard(shard) if shard else (0, 1)
    if shard_count > 1 and (out is None or compression is not None or sort != "input"):
        raise UserError(
            "variants --shard writes a plain --out file in input order, for `synnav merge`: "
            "give --out PART.tsv, no compression suffix and no --sort"
        )
    if out is not None:
        check_output_file(out, inputs=[fasta, variants_file])
    if explain_dir is not None:
        real_folder(explain_dir)  # a file or a link there is refused before anything runs
    variants = read_variants(variants_file)
    records = read_fasta(fasta, keep_invalid=True)
    references = check_variants(variants, records, input_name(fasta))
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
    label_names, thresholds = loaded.info.label_names, loaded.thresholds
    console.info(calibration_line(loaded.calibration))
    calibrated = calibrated_labels(loaded)
    assessor = domain_rows.open_assessor(loaded.info) if domain else None
    mine = variants[shard_index::shard_count]
    with ExitStack() as stack:
        if assessor is not None:
            stack.callback(assessor.close)  # its search's temporary files
        todo: Iterable[Variant] = mine
        resumable = None
        if out is not None and sort == "input":
            stack.enter_context(exclusive_lock(ResumableOutput.lock_path(out), str(out)))
            fingerprint = _fingerprint(loaded, fmt, long_policy, raw_ids)
            fingerprint["columns"] = columns(label_names, domain=domain)  # other columns: redone
            fingerprint["shard"] = [shard_index, shard_count]
            resumable = ResumableOutput(out, fingerprint, compression)
            if shard_count > 1:  # merge checks the part against this (parts.write_record)
                whole = hashlib.sha256()
                for key in _keys(variants, references):
                    digest_record(whole, key)
                resumable.shard_of = ((shard_index, shard_count), whole.hexdigest(), len(variants))
            todo = _skip_done(resumable, mine, references)
        # Sequences still to score, for the progress total (those of rows done are not).
        total = count_sequences(mine[resumable.rows_done if resumable else 0 :], references)
        progress = console.Progress(total, "variants", unit="sequences")
        stack.callback(progress.close)
        chunks = score_variants(
            loaded, todo, references, long_policy=long_policy, progress=progress, domain=assessor
        )
        kept: list[VariantRow] = []  # the rows --explain explains, after the table is written
        if explain_dir is not None:
            chunks = _keeping(chunks, kept)
        if resumable is not None:
            count = _write_resumable(chunks, resumable, fmt, loaded, raw_ids, domain)
        else:
            rows = [row for chunk in chunks for row in chunk]
            rows = sort_rows(rows, sort, thresholds)
            with output_handle(out, inputs=[fasta, variants_file], compression=compression) as h:
                writer = VariantWriter(
                    h, fmt, label_names, thresholds, loaded.max_length, raw_ids=raw_ids,
                    calibrated=calibrated, domain=domain,
                )  # fmt: skip
                h.write(writer.header)
                for row in rows:
                    writer.write(row)
            count = len(rows)
    console.detail(f"{count} variants scored")
    if explain_dir is not None:
        from synnav_cli.predict.variant_explain import explain_variants

        explain_variants(loaded, kept, references, explain_dir, steps=explain_steps)
    return count


def _keeping(chunks: Iterable[list[VariantRow]], kept: list[VariantRow]):
    """``chunks`` as they are, each row with a change also put in ``kept``."""
    for chunk in chunks:
        kept.extend(row for row in chunk if row.delta is not None and row.variant.changes)
        yield chunk


def _skip_done(
    resumable: ResumableOutput, variants: list[Variant], references: dict[str, str]
) -> Iterator[Variant]:
    """The variants an interrupted ``--out`` file lacks; each variant (line, protein, notation
    and sequence) is hashed as it goes by, so a changed input is refused, never mixed in."""
    by_number = {v.number: v for v in variants}
    for key in resumable.skip_done(_keys(variants, references)):
        yield by_number[int(key.id.split("\t", 1)[0])]


def _keys(variants: list[Variant], references: dict[str, str]) -> Iterator[FastaRecord]:
    """Each variant as the record a resumed or merged file is checked by (``digest_record``):
    its number, protein, notation and sequence (empty for an invalid one)."""
    for v in variants:
        sequence = variant_sequence(v, references) if v.problem is None else ""
        yield FastaRecord(f"{v.number}\t{v.id}\t{v.notation}", "", sequence)


def _write_resumable(
    chunks: Iterable[list[VariantRow]],
    resumable: ResumableOutput,
    fmt: str,
    loaded: LoadedModel,
    raw_ids: bool,
    domain: bool,
) -> int:
    label_names, thresholds, limit = loaded.info.label_names, loaded.thresholds, loaded.max_length
    calibrated = calibrated_labels(loaded)
    header = VariantWriter(
        io.StringIO(), fmt, label_names, thresholds, limit, calibrated=calibrated, domain=domain
    ).header
    count = resumable.rows_done
    try:
        handle = resumable.open(header)
        writer = VariantWriter(
            handle, fmt, label_names, thresholds, limit, raw_ids=raw_ids, calibrated=calibrated,
            domain=domain,
        )  # fmt: skip
        for chunk in chunks:
            for row in chunk:
                writer.write(row)
            resumable.checkpoint(len(chunk))
            count += len(chunk)
        resumable.finish()
    except OSError as error:  # a full disk, a lost mount, no permission
        resumable.close_unfinished()
        raise UserError(f"writing {resumable.partial} failed: {error.strerror or error}") from None
    except BaseException:
        resumable.close_unfinished()
        raise
    return count


def _fingerprint(loaded: LoadedModel, fmt: str, long_policy: str, raw_ids: bool) -> dict:
    """What must match for an interrupted ``--out`` file to be continued rather than redone."""
    info = loaded.info
    return {
        **model_identity(info),
        "command": "variants",
        "format": fmt,
        "columns": columns(info.label_names),
        "thresholds": [round(t, 6) for t in loaded.thresholds],
        "long_policy": long_policy,
        "max_length": loaded.max_length,
        "precision": loaded.runtime.precision,
        "raw_ids": raw_ids,
    }
