"""Variants checked and scored: each against its reference, each reference once.

Every variant is checked against its reference before anything is scored. Sequences are scored
through predict's own chunked scoring, so a no-change variant (``p.Arg123=``) gets a difference
of exactly 0, and a reference shared by a thousand variants costs one protein. The command
around this is :mod:`synnav_cli.predict.variants`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator

from synnav_cli.data.fasta import FastaRecord
from synnav_cli.data.hgvs import apply_changes
from synnav_cli.data.variants import Variant, variant_sequence
from synnav_cli.errors import UserError
from synnav_cli.predict import domain_rows
from synnav_cli.predict.run import CHUNK_RECORDS, predict_loaded
from synnav_cli.predict.variant_rows import SORTS, VariantRow, VariantWriter, sort_rows
from synnav_cli.predict.writer import Prediction
from synnav_cli.scoring.load import LoadedModel


def check_variants(
    variants: list[Variant], records: Iterable[FastaRecord], label: str
) -> dict[str, str]:
    """Check every variant against its reference among ``records`` (read once, streaming; only
    the references named are kept; ``label`` names them in messages): each variant gets its
    problem set, or its ``changes`` are known to apply. Returns the references of the valid
    variants, by the names variants use."""
    wanted = {v.id for v in variants if v.problem is None}
    found: dict[str, FastaRecord] = {}
    for record in records:
        for name in _names(record.id):
            if name in wanted and name not in found:
                found[name] = record
    for variant in variants:
        if variant.problem is not None:
            continue
        record = found.get(variant.id)
        if record is None:
            variant.problem = f"{variant.id} is not in {label}"
        elif record.problem is not None:
            variant.problem = f"its reference {variant.id} is invalid: {record.problem}"
        else:
            try:
                apply_changes(record.sequence, variant.changes, variant.id)
            except UserError as error:
                variant.problem = str(error)
    return {v.id: found[v.id].sequence for v in variants if v.problem is None}


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


def _plans(
    variants: Iterable[Variant], references: dict[str, str]
) -> Iterator[tuple[list[Variant], dict[int, str], list[str]]]:
    """Chunks of variants, each with its variants' sequences (by number) and the sequences to
    score for it: those not scored before. A reference is scored once in the whole run; a
    variant sequence once in its chunk (a repeat in a later chunk is scored again, so that
    memory stays flat)."""
    proteins = set(references.values())
    done: set[str] = set()  # references scored by an earlier chunk
    iterator = iter(variants)
    while chunk := list(itertools.islice(iterator, CHUNK_RECORDS)):
        sequences = {v.number: variant_sequence(v, references) for v in chunk if v.problem is None}
        new: dict[str, None] = {}  # insertion-ordered set
        for variant in chunk:
            if variant.problem is None:
                for sequence in (references[variant.id], sequences[variant.number]):
                    if sequence not in done:
                        new[sequence] = None
        done.update(sequence for sequence in new if sequence in proteins)
        yield chunk, sequences, list(new)


def count_sequences(variants: Iterable[Variant], references: dict[str, str]) -> int:
    """How many sequences :func:`score_variants` scores for ``variants`` (a progress total)."""
    return sum(len(new) for _, _, new in _plans(variants, references))


def score_variants(
    loaded: LoadedModel,
    variants: Iterable[Variant],
    references: dict[str, str],
    *,
    long_policy: str = "truncate",
    progress=None,
    domain: domain_rows.DomainAssessor | None = None,
) -> Iterator[list[VariantRow]]:
    """Rows for ``variants``, in input order, a chunk of variants at a time (see :func:`_plans`
    for what is scored once). With ``domain`` (``domain_rows.open_assessor``), every sequence
    scored carries its applicability-domain call, as predict's rows do."""
    proteins = set(references.values())
    kept: dict[str, Prediction] = {}  # the references' predictions, for the whole run
    for chunk, sequences, new in _plans(variants, references):
        records = [FastaRecord(str(i), "", sequence) for i, sequence in enumerate(new)]
        scored = dict(kept)
        # predict's own scoring: its probabilities (calibrated or not) and its domain calls
        for predictions in predict_loaded(
            loaded,
            records,
            long_policy=long_policy,
            chunk_records=CHUNK_RECORDS,
            progress=progress,
            domain=domain,
        ):
            for prediction in predictions:
                sequence = records[int(prediction.id)].sequence
                scored[sequence] = prediction
                if sequence in proteins:
                    kept[sequence] = prediction
        rows = []
        for variant in chunk:
            if variant.problem is not None:
                rows.append(VariantRow(variant, None, None))
                continue
            reference = scored[references[variant.id]]
            changed = scored[sequences[variant.number]]
            rows.append(VariantRow(variant, reference, changed, site=_first_site(variant)))
        yield rows


def _first_site(variant: Variant) -> int | None:
    return min((c.start for c in variant.changes), default=None)


def variant_table(
    loaded: LoadedModel,
    variants: list[Variant],
    records: Iterable[FastaRecord],
    label: str = "the input",
    variants_label: str = "the variants",
    *,
    long_policy: str = "truncate",
    skip_invalid: bool = False,
    sort: str = "input",
    progress=None,
    domain: bool = True,
) -> tuple[list[str], list[list]]:
    """The columns and the rows' values (``VariantWriter.values``) of ``synnav variants``, in
    memory: what a Python caller gets, checked and scored as the command does.

    Arguments:
        loaded: the model (``scoring.load.load_for_scoring``).
        variants: from ``data.variants.read_variants`` or ``variants_from_lines``.
        records: the reference proteins; ``label`` names them in messages, and
            ``variants_label`` the variants.
        long_policy, skip_invalid, sort: as for :func:`run_variants`.
        progress: a ``console.Progress`` to move, or None.
        domain: add the variant's applicability-domain columns, as predict's rows have.
    """
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}; choose {', '.join(SORTS)}")
    references = check_variants(variants, records, label)
    problem = refusal(variants, variants_label)
    if problem is not None and not skip_invalid:
        raise UserError(problem)
    if progress is not None:
        progress.total = count_sequences(variants, references)
    assessor = domain_rows.open_assessor(loaded.info) if domain else None
    try:
        chunks = score_variants(
            loaded,
            variants,
            references,
            long_policy=long_policy,
            progress=progress,
            domain=assessor,
        )
        rows = sort_rows([row for chunk in chunks for row in chunk], sort, loaded.thresholds)
    finally:
        if assessor is not None:
            assessor.close()  # its search's temporary files
    writer = VariantWriter(
        io.StringIO(), "jsonl", loaded.info.label_names, loaded.thresholds, loaded.max_length,
        calibrated=calibrated_labels(loaded), domain=domain,
    )  # fmt: skip
    return writer.columns, [writer.values(row) for row in rows]


def calibrated_labels(loaded: LoadedModel) -> list[str]:
    """The labels whose probabilities are calibrated (none without a calibration)."""
    return loaded.calibration.calibrated_labels if loaded.calibration is not None else []
