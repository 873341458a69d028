"""Prediction rows as TSV, CSV or JSON lines.

Columns: ``id, length, <one probability per label>, predicted, status``.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import IO

import numpy as np

from synnav_cli.data.dataset import column_name
from synnav_cli.errors import UserError

FORMATS = ("tsv", "csv", "jsonl")


@dataclass
class Prediction:
    id: str
    length: int
    probabilities: np.ndarray | None  # None when not scored
    # ok | truncated | windowed:N | skipped | short | nucleotide | invalid: <why>
    status: str


class PredictionWriter:
    """Rows as tsv, csv or jsonl: ``id, length, <one probability per label>, predicted, status``.

    The tsv/csv header is :attr:`header`; the caller writes it (a resumed file already has it).
    """

    def __init__(self, handle: IO[str], fmt: str, label_names: list[str], thresholds: list[float]):
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
        self.handle, self.fmt = handle, fmt
        # Output names have no spaces: ``excitatory synapse`` is written ``excitatory_synapse``.
        self.label_names = [column_name(name) for name in label_names]
        self.thresholds = np.asarray(thresholds)
        self.columns = ["id", "length", *self.label_names, "predicted", "status"]
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
            predicted = [
                n
                for n, p, t in zip(self.label_names, prediction.probabilities, self.thresholds)
                if p >= t
            ]
        if self._csv is not None:
            cells = ["" if p is None else f"{p:.4f}" for p in probs]
            self._csv.writerow(
                [prediction.id, prediction.length, *cells, ";".join(predicted), prediction.status]
            )
        else:
            row = {
                "id": prediction.id,
                "length": prediction.length,
                "probabilities": dict(zip(self.label_names, probs)),
                "predicted": predicted,
                "status": prediction.status,
            }
            self.handle.write(json.dumps(row) + "\n")
