"""Predict localizations for FASTA records, streaming: memory stays flat for any input size.

Records are read and scored in chunks; within a chunk they are batched by length, and rows are
written back in input order as soon as the chunk is done. With ``--out`` the rows go to a
resumable ``.partial`` file (see :mod:`synnav_cli.predict.resumable`).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from synnav_cli import console
from synnav_cli.backbones.base import Backbone
from synnav_cli.calibration import Calibration, calibration_line
from synnav_cli.data.fasta import (
    FastaRecord,
    check_input,
    looks_like_nucleotides,
    read_fasta,
    validate_fasta,
)
from synnav_cli.errors import UserError
from synnav_cli.files import check_output_file, exclusive_lock, input_name, readable_twice
from synnav_cli.model import LocalizationModel
from synnav_cli.modeldir import METADATA_FILE, WEIGHTS_FILE, ModelInfo
from synnav_cli.predict import domain_rows
from synnav_cli.predict.resumable import ResumableOutput, input_digest
from synnav_cli.predict.writer import Prediction, PredictionWriter, model_writer, threshold_line
from synnav_cli.runtime import distributed
from synnav_cli.scoring.load import LoadedModel, load_for_scoring
from synnav_cli.scoring.score import Runtime, score_sequences
from synnav_cli.scoring.windows import Window, plan_windows, pooled_probabilities, window_sums

LONG_POLICIES = ("truncate", "window", "skip")
# Shorter records are peptides, not proteins: a compartment call means nothing for them (a random
# 6-mer once scored 0.99 for mitochondrion), so they are reported with status "short", not scored.
MIN_LENGTH = 20
# Records scored together. Large enough for well-filled length-sorted batches, small enough
# that memory does not grow with the input.
CHUNK_RECORDS = 2048


def _plan(record: FastaRecord, limit: int, policy: str) -> tuple[list[str] | list[Window], str]:
    """The pieces of ``record`` to score (sequences, or the windows of a windowed protein), and
    its status; no pieces for a record not scored."""
    sequence = record.sequence
    if record.problem is not None:
        return [], f"invalid: {record.problem}"
    if looks_like_nucleotides(sequence):
        return [], "nucleotide"
    if len(sequence) < MIN_LENGTH:
        return [], "short"
    if len(sequence) <= limit:
        return [sequence], "ok"
    if policy == "skip":
        return [], "skipped"
    if policy == "truncate":
        return [sequence[:limit]], "truncated"
    windows = plan_windows(sequence, limit)
    return windows, f"windowed:{len(windows)}"


def predict_chunks(
    model: LocalizationModel,
    backbone: Backbone,
    records: Iterable[FastaRecord] | None,
    runtime: Runtime,
    *,
    max_length: int,
    long_policy: str = "truncate",
    chunk_records: int = CHUNK_RECORDS,
    progress=None,
    calibration: Calibration | None = None,
    domain: domain_rows.DomainAssessor | None = None,
) -> Iterator[list[Prediction]]:
    """Predictions for ``records`` a chunk at a time, in input order.

    Proteins longer than ``max_length`` are truncated to their N-terminal part, scored as
    overlapping windows whose residue vectors are pooled into one mean for the head (see
    :mod:`synnav_cli.scoring.windows`), or skipped (reported, not dropped).
    Under torchrun rank 0 reads ``records`` (other ranks pass None), every rank scores its share
    of each chunk and every rank gets the whole chunk's predictions. The next chunk is read
    only when the caller asks for it. With ``domain``, each scored prediction carries its
    applicability-domain call (:mod:`synnav_cli.predict.domain_rows`).
    """
    if long_policy not in LONG_POLICIES:
        raise UserError(
            f"unknown long-protein policy {long_policy!r}; choose {', '.join(LONG_POLICIES)}"
        )

    # This chunk's progress, moved with every batch scored: a chunk can take minutes.
    moved = None

    # The domain's embedding distance reads the pooled vectors the head reads: no second pass.
    wide = domain is not None and domain.wants_embeddings
    labels = model.head.linear.out_features

    def score(part: list[str]) -> np.ndarray:
        return score_sequences(model, backbone, part, runtime, progress=moved, with_pooled=wide)

    def pool(windows: list[Window]) -> np.ndarray:
        return window_sums(model, backbone, windows, runtime, progress=moved)

    for chunk in distributed.broadcast_chunks(records, chunk_records):
        plans = [_plan(record, max_length, long_policy) for record in chunk]
        whole = [pieces[0] for pieces, _ in plans if pieces and isinstance(pieces[0], str)]
        windowed = [pieces for pieces, _ in plans if pieces and isinstance(pieces[0], Window)]
        flat = [window for windows in windowed for window in windows]
        moved = progress.chunk(len(chunk)) if progress is not None else None
        if moved is not None:  # both kinds of piece that this rank scores move one count
            moved.over(len(distributed.shard(whole)) + len(distributed.shard(flat)))
        scored = iter(distributed.score_sharded(score, whole) if whole else ())
        if windowed:
            sums = distributed.score_sharded(pool, flat)
            lengths = [len(windows) for windows in windowed]
            scored_windows = iter(pooled_probabilities(model, sums, lengths, runtime))
            means = iter(domain_rows.window_means(sums, lengths) if wide else ())
        predictions, pooled = [], []
        for record, (pieces, status) in zip(chunk, plans):
            probs = None
            if pieces:
                probs = next(scored_windows if isinstance(pieces[0], Window) else scored)
                if wide:  # a windowed protein's pooled vector comes from its window sums
                    pooled.append(next(means) if isinstance(pieces[0], Window) else probs[labels:])
                    probs = probs[:labels]
            if probs is not None and calibration is not None:  # calls stay on the raw scores
                predictions.append(
                    Prediction(record.id, record.length, calibration.apply(probs), status, probs)
                )
                continue
            predictions.append(Prediction(record.id, record.length, probs, status))
        if domain is not None:
            domain_rows.attach(domain, [r.sequence for r in chunk], predictions, pooled)
        if moved is not None:
            moved.finish()
        yield predictions


def predict_records(
    model: LocalizationModel,
    backbone: Backbone,
    records: Iterable[FastaRecord],
    runtime: Runtime,
    **options,
) -> Iterator[Prediction]:
    """One prediction per record, in input order; options as for :func:`predict_chunks`."""
    for chunk in predict_chunks(model, backbone, records, runtime, **options):
        yield from chunk


def predict_loaded(
    loaded: LoadedModel,
    records: Iterable[FastaRecord] | None,
    *,
    long_policy: str = "truncate",
    chunk_records: int | None = None,
    progress=None,
    domain: domain_rows.DomainAssessor | None = None,
) -> Iterator[list[Prediction]]:
    """:func:`predict_chunks` with all that ``loaded`` holds (network, length limit,
    calibration): ``synnav predict`` and the Python API score through here. ``domain``: add the
    applicability-domain calls (``domain_rows.open_assessor(loaded.info)``). ``chunk_records``
    None: :data:`CHUNK_RECORDS` as it is when called (tests set it smaller)."""
    return predict_chunks(
        loaded.model,
        loaded.backbone,
        records,
        loaded.runtime,
        max_length=loaded.max_length,
        long_policy=long_policy,
        chunk_records=chunk_records or CHUNK_RECORDS,
        progress=progress,
        calibration=loaded.calibration,
        domain=domain,
    )


def run_prediction(
    fasta: str,
    *,
    model_name: str | None = None,
    fmt: str = "tsv",
    out: Path | None = None,
    threshold_values: Iterable[str] = (),
    long_policy: str = "truncate",
    max_tokens: int | None = None,
    device: str = "auto",
    offline: bool = False,
    shard: str | None = None,
    skip_invalid: bool = False,
    precision: str = "auto",
    raw_ids: bool = False,
    compression: str | None = None,
    domain: bool = True,
) -> int:
    """Predict every record of ``fasta`` (path or ``-``) to ``out`` or stdout; returns the count.

    Under torchrun every rank scores a share of each chunk and rank 0 reads and writes.

    Arguments:
        fasta: FASTA path, or ``-`` for standard input.
        model_name: model directory or name; None: the default model, else the bundled one.
        fmt: tsv, csv or jsonl (``writer.output_format`` picks it from ``--out``'s suffix).
        out: file to write; built in ``out.partial`` and renamed when complete. Running the same
            command again after an interruption continues the partial file.
        compression: gzip, bzip2 or xz for ``out``: the partial file holds the plain rows, and
            the finished run compresses them into ``out``. Not with ``shard``: merge reads
            plain parts.
        threshold_values: overrides of the model's thresholds (``0.4`` or ``LABEL=0.4``).
        long_policy: truncate, window or skip for proteins over the maximum length.
        max_tokens: padded tokens per batch; None derives it from the device.
        device: auto, cpu, cuda, cuda:N or mps.
        offline: never download weights.
        shard: ``I/N`` scores records I-1, I-1+N, ... only (for array jobs; see ``synnav merge``).
        skip_invalid: score the valid records and give the invalid ones a row whose status says
            why; without it an invalid record anywhere stops the run before anything is scored.
        precision: auto, fp32, bf16 or fp16 (see ``hardware.scoring_precision``); recorded in a
            resumable ``--out`` file's fingerprint, so a resumed run never mixes precisions.
        raw_ids: tsv ids and label names as they are, without the ``'`` that keeps a
            spreadsheet from running one as a formula (``writer.text_cells``; csv always has it).
        domain: add the applicability-domain columns (nearest training protein, identity,
            coverage, embedding distance, in/edge/out; docs/interpreting.md).
    """
    shard_index, shard_count = distributed.parse_shard(shard) if shard else (0, 1)
    if compression is not None and shard_count > 1:
        raise UserError(
            f"--out {out}: --shard parts are plain files for `synnav merge`; drop the "
            "compression suffix"
        )
    distributed.init()
    check_input(fasta)  # a mistyped path is the only message, not one after the model's
    if out is not None:
        check_output_file(out, inputs=[fasta])
    if long_policy not in LONG_POLICIES:
        raise UserError(
            f"unknown long-protein policy {long_policy!r}; choose {', '.join(LONG_POLICIES)}"
        )
    with ExitStack() as stack:
        # Standard input is spooled so that it can be validated whole before anything is scored.
        source = stack.enter_context(readable_twice(fasta)) if distributed.is_main() else fasta
        total = validate_input(source, input_name(source), skip_invalid)
        loaded = load_for_scoring(
            model_name,
            threshold_values=threshold_values,
            device=device,
            max_tokens=max_tokens,
            offline=offline,
            precision=precision,
        )
        info, runtime = loaded.info, loaded.runtime
        thresholds, limit = loaded.thresholds, loaded.max_length
        assessor = domain_rows.open_assessor(info) if domain else None
        if assessor is not None:
            stack.callback(assessor.close)

        writes = distributed.is_main()
        if writes:  # the calls' thresholds where the calls are made, out of the table's way
            console.info(threshold_line(info.label_names, loaded.shown_thresholds or thresholds))
            console.info(calibration_line(loaded.calibration))
        records = None
        resumable = None
        if writes:
            records = read_fasta(source, keep_invalid=skip_invalid)
            if shard_count > 1:
                records = distributed.take_shard(records, shard_index, shard_count)
            if out is not None:
                # One writer per output: a second run on the same --out is refused, not interleaved.
                stack.enter_context(exclusive_lock(ResumableOutput.lock_path(out), str(out)))
                fingerprint = _fingerprint(
                    info, fmt, thresholds, long_policy, limit, (shard_index, shard_count)
                )
                fingerprint["precision"] = runtime.precision
                if raw_ids:
                    fingerprint["raw_ids"] = True
                if domain:  # other columns: a file of a --no-domain run is not continued
                    fingerprint["domain"] = True
                resumable = ResumableOutput(out, fingerprint, compression)
                if shard_count > 1:  # merge checks the part against this (parts.write_record)
                    sha, _ = input_digest(source, keep_invalid=skip_invalid)
                    resumable.shard_of = ((shard_index, shard_count), sha, total)
                records = resumable.skip_done(records)
        # The validation pass counted the records: this run scores its shard's, less any a
        # resumed --out file already holds.
        todo = len(range(shard_index, total, shard_count)) - (
            resumable.rows_done if resumable else 0
        )
        progress = console.Progress(todo if writes else None, "predict")
        stack.callback(progress.close)
        chunks = predict_loaded(
            loaded, records, long_policy=long_policy, progress=progress, domain=assessor
        )
        # The whole input was validated above, so nothing fails after rows are written.
        first = next(chunks, None)
        if not writes:  # the other ranks score; rank 0 writes and reports
            return sum(len(chunk) for chunk in itertools.chain([first or []], chunks))
        if first is None and not (
            shard_count > 1 or (resumable is not None and resumable.resuming)
        ):
            raise UserError("no records to predict")
        if first is None and shard_count > 1:
            console.warn(f"shard {shard_index + 1}/{shard_count} holds no records")
        rows = itertools.chain([first] if first else [], chunks)
        return _write_predictions(rows, resumable, fmt, loaded, raw_ids, domain)


def validate_input(source: str, label: str, skip_invalid: bool) -> int:
    """Check every record before any is scored (rank 0 reads; every rank gets the verdict).

    Returns the number of records, for progress totals.
    """
    verdict: tuple[int, str | None] = (0, None)
    if distributed.is_main():
        try:
            found = validate_fasta(source)
        except UserError as error:
            verdict = (0, str(error))
        else:
            verdict = (found.records, found.refusal(label, skip_invalid))
    records, problem = distributed.broadcast(verdict)
    if problem is not None:
        raise UserError(problem)
    return records



def _write_predictions(
    chunks: Iterable[list[Prediction]],
    resumable: ResumableOutput | None,
    fmt: str,
    loaded: LoadedModel,
    raw_ids: bool,
    domain: bool = False,
) -> int:
    """Write the rows through :func:`~synnav_cli.predict.writer.model_writer` (the Python API's
    DataFrame comes from one too) to stdout or ``resumable``; returns the count."""
    count = 0
    if resumable is None:
        writer = model_writer(sys.stdout, fmt, loaded, raw_ids=raw_ids, domain=domain)
        sys.stdout.write(writer.header)
        for chunk in chunks:
            for prediction in chunk:
                writer.write(prediction)
            count += len(chunk)
        sys.stdout.flush()
        console.detail(f"{count} proteins predicted")
        return count
    header = model_writer(io.StringIO(), fmt, loaded, raw_ids=raw_ids, domain=domain).header
    try:
        writer = model_writer(resumable.open(header), fmt, loaded, raw_ids=raw_ids, domain=domain)
        for chunk in chunks:
            for prediction in chunk:
                writer.write(prediction)
            resumable.checkpoint(len(chunk))
            count += len(chunk)
        resumable.finish()
    except OSError as error:  # a full disk, a lost mount, no permission
        resumable.close_unfinished()
        raise UserError(f"writing {resumable.partial} failed: {error.strerror or error}") from None
    except BaseException:
        resumable.close_unfinished()
        raise
    console.detail(f"{count} proteins predicted")
    return count


def _fingerprint(
    info: ModelInfo,
    fmt: str,
    thresholds: list[float],
    long_policy: str,
    limit: int,
    shard: tuple[int, int],
) -> dict:
    """What must match for an interrupted ``--out`` file to be continued rather than redone."""
    return {
        **model_identity(info),
        "format": fmt,
        # A partial file with other columns (an older synnav's) is not continued with these.
        "columns": PredictionWriter(io.StringIO(), fmt, info.label_names, thresholds).columns,
        "thresholds": [round(t, 6) for t in thresholds],
        "labels": info.label_names,
        "long_policy": long_policy,
        "max_length": limit,
        "shard": list(shard),
    }


def model_identity(info: ModelInfo) -> dict:
    """The model directory, a hash of its metadata and its weights' size: a changed model is not
    mistaken for the one an interrupted run used (hashing gigabytes of weights would cost more)."""
    weights = info.path / WEIGHTS_FILE
    return {
        "model": str(info.path.resolve()),
        "model_metadata_sha256": hashlib.sha256(
            (info.path / METADATA_FILE).read_bytes()
        ).hexdigest(),
        "weights_bytes": weights.stat().st_size if weights.exists() else None,
    }
