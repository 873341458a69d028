"""Predict localizations for FASTA records, streaming: memory stays flat for any input size.

Records are read and scored in chunks; within a chunk they are batched by length, and rows are
written back in input order as soon as the chunk is done. With ``--out`` the rows go to a
resumable ``.partial`` file (see :mod:`synnav_cli.resumable`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from synnav_cli import console, distributed, hardware
from synnav_cli.backbones.base import Backbone
from synnav_cli.data import FastaRecord, check_input, read_fasta
from synnav_cli.errors import UserError
from synnav_cli.files import check_output_file, exclusive_lock
from synnav_cli.inference import Runtime, score_sequences
from synnav_cli.model import LocalizationModel
from synnav_cli.modeldir import METADATA_FILE, WEIGHTS_FILE, ModelInfo, load_model, resolve_model
from synnav_cli.plugins import get_backbone
from synnav_cli.resumable import ResumableOutput

LONG_POLICIES = ("truncate", "window", "skip")
FORMATS = ("tsv", "csv", "jsonl")
# Records scored together. Large enough for well-filled length-sorted batches, small enough
# that memory does not grow with the input.
CHUNK_RECORDS = 2048


@dataclass
class Prediction:
    id: str
    length: int
    probabilities: np.ndarray | None  # None when skipped
    status: str  # ok | truncated | windowed:N | skipped


def _windows(sequence: str, size: int) -> list[str]:
    """Overlapping windows covering the whole protein; neighbours share half a window."""
    stride = max(1, size // 2)
    starts = list(range(0, len(sequence) - size + 1, stride))
    if starts[-1] + size < len(sequence):
        starts.append(len(sequence) - size)
    return [sequence[s : s + size] for s in starts]


def _plan(record: FastaRecord, limit: int, policy: str) -> tuple[list[str], str]:
    sequence = record.sequence
    if len(sequence) <= limit:
        return [sequence], "ok"
    if policy == "skip":
        return [], "skipped"
    if policy == "truncate":
        return [sequence[:limit]], "truncated"
    pieces = _windows(sequence, limit)
    return pieces, f"windowed:{len(pieces)}"


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
) -> Iterator[list[Prediction]]:
    """Predictions for ``records`` a chunk at a time, in input order.

    Proteins longer than ``max_length`` are truncated to their N-terminal part, scored as
    overlapping windows whose probabilities are averaged, or skipped (reported, not dropped).
    Under torchrun rank 0 reads ``records`` (other ranks pass None), every rank scores its share
    of each chunk and every rank gets the whole chunk's predictions. The next chunk is read
    only when the caller asks for it.
    """
    if long_policy not in LONG_POLICIES:
        raise UserError(f"unknown long-protein policy {long_policy!r}; choose {', '.join(LONG_POLICIES)}")

    def score(sequences: list[str]) -> np.ndarray:
        return score_sequences(model, backbone, sequences, runtime)

    for chunk in distributed.broadcast_chunks(records, chunk_records):
        plans = [_plan(record, max_length, long_policy) for record in chunk]
        pieces = [piece for sequences, _ in plans for piece in sequences]
        probabilities = distributed.score_sharded(score, pieces) if pieces else None
        predictions, offset = [], 0
        for record, (sequences, status) in zip(chunk, plans):
            probs = None
            if sequences:
                probs = probabilities[offset : offset + len(sequences)].mean(axis=0)
                offset += len(sequences)
            predictions.append(Prediction(record.id, len(record.sequence), probs, status))
        if progress is not None:
            progress.advance(len(chunk))
        yield predictions


def predict_records(model: LocalizationModel, backbone: Backbone, records: Iterable[FastaRecord],
                    runtime: Runtime, **options) -> Iterator[Prediction]:
    """One prediction per record, in input order; options as for :func:`predict_chunks`."""
    for chunk in predict_chunks(model, backbone, records, runtime, **options):
        yield from chunk


def parse_thresholds(values: Iterable[str], label_names: list[str], defaults: list[float]) -> list[float]:
    """``0.4`` sets every label; ``ER=0.3`` sets one. Later values win."""
    thresholds = list(defaults)
    lowered = {name.lower(): j for j, name in enumerate(label_names)}
    for value in values:
        name, sep, number = value.rpartition("=")
        try:
            threshold = float(number)
        except ValueError:
            raise UserError(f"--threshold {value!r}: expected a number or LABEL=NUMBER") from None
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"--threshold {value!r}: thresholds lie between 0 and 1")
        if not sep:
            thresholds = [threshold] * len(label_names)
            continue
        if name.lower() not in lowered:
            raise UserError(f"--threshold {value!r}: unknown label; labels: {', '.join(label_names)}")
        thresholds[lowered[name.lower()]] = threshold
    return thresholds


class PredictionWriter:
    """Rows as tsv, csv or jsonl: ``id, length, <one probability per label>, predicted, status``.

    The tsv/csv header is :attr:`header`; the caller writes it (a resumed file already has it).
    """

    def __init__(self, handle: IO[str], fmt: str, label_names: list[str], thresholds: list[float]):
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
        self.handle, self.fmt = handle, fmt
        self.label_names, self.thresholds = label_names, np.asarray(thresholds)
        self.columns = ["id", "length", *label_names, "predicted", "status"]
        self.header = ""
        self._csv = None
        if fmt != "jsonl":
            dialect = {"delimiter": "\t" if fmt == "tsv" else ",", "lineterminator": "\n"}
            line = io.StringIO()
            csv.writer(line, **dialect).writerow(self.columns)
            self.header = line.getvalue()
            self._csv = csv.writer(handle, **dialect)

    def write(self, prediction: Prediction) -> None:
        if prediction.probabilities is None:
            probs = [None] * len(self.label_names)
            predicted: list[str] = []
        else:
            probs = [round(float(p), 4) for p in prediction.probabilities]
            predicted = [n for n, p, t in zip(self.label_names, prediction.probabilities, self.thresholds) if p >= t]
        if self._csv is not None:
            cells = ["" if p is None else f"{p:.4f}" for p in probs]
            self._csv.writerow([prediction.id, prediction.length, *cells, ";".join(predicted), prediction.status])
        else:
            row = {"id": prediction.id, "length": prediction.length,
                   "probabilities": dict(zip(self.label_names, probs)),
                   "predicted": predicted, "status": prediction.status}
            self.handle.write(json.dumps(row) + "\n")


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
) -> int:
    """Predict every record of ``fasta`` (path or ``-``) to ``out`` or stdout; returns the count.

    Under torchrun every rank scores a share of each chunk and rank 0 reads and writes.

    Arguments:
        fasta: FASTA path, or ``-`` for standard input.
        model_name: model directory or name; None picks the newest trained model, else the
            bundled one.
        fmt: tsv, csv or jsonl.
        out: file to write; built in ``out.partial`` and renamed when complete. Running the same
            command again after an interruption continues the partial file.
        threshold_values: overrides of the model's thresholds (``0.4`` or ``LABEL=0.4``).
        long_policy: truncate, window or skip for proteins over the maximum length.
        max_tokens: padded tokens per batch; None derives it from the device.
        device: auto, cpu, cuda, cuda:N or mps.
        offline: never download weights.
        shard: ``I/N`` scores records I-1, I-1+N, ... only (for array jobs; see ``synnav merge``).
    """
    shard_index, shard_count = distributed.parse_shard(shard) if shard else (0, 1)
    distributed.init()
    check_input(fasta)  # a mistyped path is the only message, not one after the model's
    if out is not None:
        check_output_file(out, inputs=[fasta])
    info, how = resolve_model(model_name)
    if how == "bundled":
        console.info(
            f"Using the bundled model ({info.meta.get('description', info.meta['backbone'])}); "
            "train an ESM C model with `synnav train` for better accuracy."
        )
    elif how == "latest":
        console.info(f"Using the newest trained model {info.path}.")
    backbone = get_backbone(info.meta["backbone"])
    thresholds = parse_thresholds(threshold_values, info.label_names, info.thresholds)
    if long_policy not in LONG_POLICIES:
        raise UserError(f"unknown long-protein policy {long_policy!r}; choose {', '.join(LONG_POLICIES)}")
    torch_device = distributed.pick_device(device)
    precision = hardware.resolve_precision(torch_device, "auto")
    limit = min(int(info.meta.get("config", {}).get("max_length", backbone.max_length)), backbone.max_length)
    budget = max_tokens or hardware.default_token_budget(
        torch_device, embedding_dim=backbone.embedding_dim, training=False
    )
    runtime = Runtime(torch_device, precision, max(budget, limit + 2))
    console.detail(f"device {torch_device}, precision {precision}, {runtime.max_tokens} tokens a batch")
    model = load_model(info, torch_device, offline=offline)

    writes = distributed.is_main()
    with ExitStack() as stack:
        records = None
        resumable = None
        if writes:
            records = read_fasta(fasta)
            if shard_count > 1:
                records = distributed.take_shard(records, shard_index, shard_count)
            if out is not None:
                # One writer per output: a second run on the same --out is refused, not interleaved.
                stack.enter_context(exclusive_lock(ResumableOutput.lock_path(out), str(out)))
                fingerprint = _fingerprint(info, fmt, thresholds, long_policy, limit, (shard_index, shard_count))
                resumable = ResumableOutput(out, fingerprint)
                records = resumable.skip_done(records)
        chunks = predict_chunks(model, backbone, records, runtime, max_length=limit, long_policy=long_policy,
                                chunk_records=CHUNK_RECORDS, progress=console.Progress(0, "predict"))
        # Read the first chunk before writing anything, so that an empty or non-FASTA input fails
        # with nothing on stdout. Later records are validated as they stream by.
        first = next(chunks, None)
        if not writes:  # the other ranks score; rank 0 writes and reports
            return sum(len(chunk) for chunk in itertools.chain([first or []], chunks))
        if first is None and not (shard_count > 1 or (resumable is not None and resumable.resuming)):
            raise UserError("no records to predict")
        if first is None and shard_count > 1:
            console.warn(f"shard {shard_index + 1}/{shard_count} holds no records")
        return _write_predictions(itertools.chain([first] if first else [], chunks), resumable,
                                  fmt, info.label_names, thresholds)


def _write_predictions(chunks: Iterable[list[Prediction]], resumable: ResumableOutput | None, fmt: str,
                       label_names: list[str], thresholds: list[float]) -> int:
    count = 0
    if resumable is None:
        writer = PredictionWriter(sys.stdout, fmt, label_names, thresholds)
        sys.stdout.write(writer.header)
        for chunk in chunks:
            for prediction in chunk:
                writer.write(prediction)
            count += len(chunk)
        sys.stdout.flush()
        console.detail(f"{count} proteins predicted")
        return count
    header = PredictionWriter(io.StringIO(), fmt, label_names, thresholds).header
    try:
        writer = PredictionWriter(resumable.open(header), fmt, label_names, thresholds)
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


def _fingerprint(info: ModelInfo, fmt: str, thresholds: list[float], long_policy: str, limit: int,
                 shard: tuple[int, int]) -> dict:
    """What must match for an interrupted ``--out`` file to be continued rather than redone."""
    weights = info.path / WEIGHTS_FILE
    return {
        "model": str(info.path.resolve()),
        "model_metadata_sha256": hashlib.sha256((info.path / METADATA_FILE).read_bytes()).hexdigest(),
        "weights_bytes": weights.stat().st_size if weights.exists() else None,
        "format": fmt, "thresholds": [round(t, 6) for t in thresholds], "labels": info.label_names,
        "long_policy": long_policy, "max_length": limit, "shard": list(shard),
    }
