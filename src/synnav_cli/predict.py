"""Predict localizations for FASTA records, streaming: memory stays flat for any input size.

Records are read and scored in chunks; within a chunk they are batched by length, and rows are
written back in input order as soon as the chunk is done.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO

import numpy as np

from synnav_cli import console, hardware
from synnav_cli.backbones.base import Backbone
from synnav_cli.data import FastaRecord, read_fasta
from synnav_cli.errors import UserError
from synnav_cli.inference import Runtime, score_sequences
from synnav_cli.model import LocalizationModel
from synnav_cli.modeldir import load_model, resolve_model
from synnav_cli.plugins import get_backbone

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


def predict_records(
    model: LocalizationModel,
    backbone: Backbone,
    records: Iterable[FastaRecord],
    runtime: Runtime,
    *,
    max_length: int,
    long_policy: str = "truncate",
    chunk_records: int = CHUNK_RECORDS,
    progress=None,
) -> Iterator[Prediction]:
    """Yield one prediction per record, in input order.

    Proteins longer than ``max_length`` are truncated to their N-terminal part, scored as
    overlapping windows whose probabilities are averaged, or skipped (reported, not dropped).
    """
    if long_policy not in LONG_POLICIES:
        raise UserError(f"unknown long-protein policy {long_policy!r}; choose {', '.join(LONG_POLICIES)}")
    iterator = iter(records)
    while chunk := list(islice(iterator, chunk_records)):
        plans = [_plan(record, max_length, long_policy) for record in chunk]
        pieces = [piece for sequences, _ in plans for piece in sequences]
        probabilities = score_sequences(model, backbone, pieces, runtime) if pieces else None
        offset = 0
        for record, (sequences, status) in zip(chunk, plans):
            if sequences:
                block = probabilities[offset : offset + len(sequences)]
                offset += len(sequences)
                probs = block.mean(axis=0)
            else:
                probs = None
            if progress is not None:
                progress.advance(1)
            yield Prediction(record.id, len(record.sequence), probs, status)


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
    """Writes rows as tsv, csv or jsonl: ``id, length, <one probability per label>, predicted, status``."""

    def __init__(self, handle: IO[str], fmt: str, label_names: list[str], thresholds: list[float]):
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
        self.handle, self.fmt = handle, fmt
        self.label_names, self.thresholds = label_names, np.asarray(thresholds)
        self.columns = ["id", "length", *label_names, "predicted", "status"]
        self._csv = None
        if fmt != "jsonl":
            self._csv = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
            self._csv.writerow(self.columns)

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
) -> int:
    """Predict every record of ``fasta`` (path or ``-``) to ``out`` or stdout; returns the count.

    Arguments:
        fasta: FASTA path, or ``-`` for standard input.
        model_name: model directory or name; None picks the newest trained model, else the
            bundled one.
        fmt: tsv, csv or jsonl.
        out: file to write; written to a temporary sibling and renamed when complete.
        threshold_values: overrides of the model's thresholds (``0.4`` or ``LABEL=0.4``).
        long_policy: truncate, window or skip for proteins over the maximum length.
        max_tokens: padded tokens per batch; None derives it from the device.
        device: auto, cpu, cuda, cuda:N or mps.
        offline: never download weights.
    """
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
    torch_device = hardware.pick_device(device)
    precision = hardware.resolve_precision(torch_device, "auto")
    limit = min(int(info.meta.get("config", {}).get("max_length", backbone.max_length)), backbone.max_length)
    budget = max_tokens or hardware.default_token_budget(
        torch_device, embedding_dim=backbone.embedding_dim, training=False
    )
    runtime = Runtime(torch_device, precision, max(budget, limit + 2))
    console.detail(f"device {torch_device}, precision {precision}, {runtime.max_tokens} tokens a batch")
    model = load_model(info, torch_device, offline=offline)
    # Read the first record before writing anything, so that an empty or non-FASTA input fails
    # with nothing on stdout. Later records are validated as they stream by.
    records = read_fasta(fasta)
    first = next(records)
    records = itertools.chain([first], records)
    count = 0
    with _output(out) as handle:
        writer = PredictionWriter(handle, fmt, info.label_names, thresholds)
        progress = console.Progress(0, "predict")
        for prediction in predict_records(model, backbone, records, runtime, max_length=limit,
                                          long_policy=long_policy, progress=progress):
            writer.write(prediction)
            count += 1
        progress.close()
    if count == 0:
        raise UserError("no records to predict")
    console.detail(f"{count} proteins predicted")
    return count


@contextmanager
def _output(out: Path | None):
    if out is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
