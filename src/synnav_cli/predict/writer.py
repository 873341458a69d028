"""Prediction rows as TSV, CSV or JSON lines.

Columns: ``id, length, <one probability per label>, predicted, status, top, top_probability,
calibration``.
A text cell that a spreadsheet would run as a formula gets a leading ``'`` (see
:func:`spreadsheet_text`). ``--out``'s suffix names the format and the compression
(:func:`output_format`).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np

from synnav_cli.data.dataset import column_name
from synnav_cli.domain.assess import DOMAIN_COLUMNS, DomainCall
from synnav_cli.errors import UserError
from synnav_cli.files import OUTPUT_COMPRESSIONS

if TYPE_CHECKING:
    from synnav_cli.scoring.load import LoadedModel

FORMATS = ("tsv", "csv", "jsonl")
# --out suffix -> format. ``.json`` is not here: JSON lines are not one JSON document.
SUFFIX_FORMATS = {
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}


def output_format(fmt: str | None, out: Path | None) -> tuple[str, str | None]:
    """The format (``fmt``, else what ``out``'s suffix names, else tsv) and the compression
    (gzip, bzip2 or xz for ``.gz``, ``.bz2``, ``.xz``; None on stdout) of predict's output.

    A ``fmt`` that ``out``'s suffix contradicts (``--format csv -o out.tsv``) is an error, as is
    ``.json``; an unknown suffix takes ``fmt`` or tsv.
    """
    if out is None:
        return fmt or "tsv", None
    name = Path(out)
    compression = OUTPUT_COMPRESSIONS.get(name.suffix.lower())
    suffix = (name.with_suffix("") if compression else name).suffix.lower()
    if suffix == ".json":
        raise UserError(
            f"--out {out}: predict writes JSON lines (one object a line), not one JSON document; "
            f"name the file .jsonl{name.suffix if compression else ''}"
        )
    named = SUFFIX_FORMATS.get(suffix)
    if fmt is not None and named is not None and fmt != named:
        raise UserError(
            f"--format {fmt} but --out {out} names {named} ({suffix}); drop --format or rename "
            "the file"
        )
    return fmt or named or "tsv", compression


def threshold_line(label_names: list[str], thresholds: list[float]) -> str:
    """The thresholds behind the ``predicted`` calls, as one line for stderr."""
    shown = [
        f"{column_name(name)} {round(t, 4):g}"
        if np.isfinite(t)
        else f"{column_name(name)} never (no training data)"
        for name, t in zip(label_names, thresholds)
    ]
    return (
        f"Thresholds: {', '.join(shown)}; `predicted` holds the labels at or over theirs, "
        "`top` the most likely label."
    )


# Excel and LibreOffice run a cell that starts with one of these as a formula (=1+1, +SUM(1,2),
# -2+3, @SUM(1), or a tab or carriage return ahead of one). OWASP's advice is a leading ' that
# makes the cell text. ' itself is on the list, so that reading back is one rule for every cell:
# one that starts with ' had one added (:func:`original_text`).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_text(cell: str) -> str:
    """``cell`` as a spreadsheet will show and never run: ``'`` ahead of a formula's first sign."""
    return "'" + cell if cell.startswith(FORMULA_STARTS) else cell


def original_text(cell: str) -> str:
    """The text :func:`spreadsheet_text` was given (one leading ``'`` dropped)."""
    return cell.removeprefix("'")


def text_cells(fmt: str, raw_ids: bool = False):
    """How a format writes text cells (ids, label names): csv always for spreadsheets, tsv too
    unless ``raw_ids``, jsonl as they are (JSON strings are never formulas)."""
    if fmt == "csv" or (fmt == "tsv" and not raw_ids):
        return spreadsheet_text
    return str


@dataclass
class Prediction:
    id: str
    length: int
    probabilities: np.ndarray | None  # None when not scored
    # ok | truncated | windowed:N | skipped | short | nucleotide | invalid: <why>
    status: str
    # The model's raw scores when ``probabilities`` are calibrated: calls are made on these, at
    # the model's raw thresholds, so a calibration never changes them (see calibration.py).
    scores: np.ndarray | None = None
    # How far the protein is from the training proteins (domain/assess.py); None: not assessed.
    domain: DomainCall | None = None


class PredictionWriter:
    """Rows as tsv, csv or jsonl: ``id, length, <one probability per label>, predicted, status,
    top, top_probability, calibration``. ``top`` is the most likely label a scored record has (a
    label without training data never is), whether or not it reaches its threshold; empty (null)
    for a record not scored. ``calibration`` says which label columns are calibrated
    (``calibrated``, ``uncalibrated``, or ``calibrated: ER;nucleus``); empty when not scored.

    The tsv/csv header is :attr:`header`; the caller writes it (a resumed file already has it).
    """

    def __init__(
        self,
        handle: IO[str],
        fmt: str,
        label_names: list[str],
        thresholds: list[float],
        *,
        raw_ids: bool = False,
        calibrated: list[str] = (),
        domain: bool = False,
    ):
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
        self.handle, self.fmt = handle, fmt
        self._text = text_cells(fmt, raw_ids)
        # Output names have no spaces: ``excitatory synapse`` is written ``excitatory_synapse``.
        self.label_names = [column_name(name) for name in label_names]
        self.thresholds = np.asarray(thresholds)
        # Columns added later go last, so that every earlier column keeps its place.
        self.columns = [
            "id",
            "length",
            *self.label_names,
            "predicted",
            "status",
            "top",
            "top_probability",
            "calibration",
        ]
        self.domain = domain  # the applicability-domain columns, last (docs/interpreting.md)
        if domain:
            self.columns += DOMAIN_COLUMNS
        # What the calibration column says: which label columns hold calibrated probabilities.
        shown = [column_name(name) for name in calibrated]
        if not shown:
            self._calibration = "uncalibrated"
        elif len(shown) == len(self.label_names):
            self._calibration = "calibrated"
        else:
            self._calibration = "calibrated: " + ";".join(shown)
        # Labels that can be the top: those with training data (an infinite threshold: none).
        self._ranked = np.isfinite(self.thresholds)
        self.header = ""
        self._csv = None
        if fmt != "jsonl":
            dialect = {"delimiter": "\t" if fmt == "tsv" else ",", "lineterminator": "\n"}
            line = io.StringIO()
            csv.writer(line, **dialect).writerow([self._text(c) for c in self.columns])
            self.header = line.getvalue()
            self._csv = csv.writer(handle, **dialect)

    def values(self, prediction: Prediction) -> list:
        """``prediction``'s row, one value per :attr:`columns` entry, before any format: the id as
        given, the length, each label's probability rounded to 4 decimals, the called labels
        (a list), the status, the top label and its probability; None where a record not scored
        has no value. Every format writes these (:meth:`write`), and the Python API's DataFrame
        is made of them (``synnav_cli.api``), so a column added here reaches both."""
        top, top_probability, calibration = None, None, None
        if prediction.probabilities is None:
            probs = [None] * len(self.label_names)
            predicted: list[str] = []
        else:
            probs = [round(float(p), 4) for p in prediction.probabilities]
            scores = prediction.probabilities if prediction.scores is None else prediction.scores
            predicted = [n for n, p, t in zip(self.label_names, scores, self.thresholds) if p >= t]
            calibration = self._calibration
            if self._ranked.any():
                best = int(np.argmax(np.where(self._ranked, prediction.probabilities, -np.inf)))
                top, top_probability = self.label_names[best], probs[best]
        return [
            prediction.id,
            prediction.length,
            *probs,
            predicted,
            prediction.status,
            top,
            top_probability,
            calibration,
            *(domain_values(prediction.domain) if self.domain else []),
        ]

    def write(self, prediction: Prediction) -> None:
        values = self.values(prediction)
        if self._csv is not None:
            self._csv.writerow([self._cell(value) for value in values])
            return
        labels = len(self.label_names)
        row = {
            "id": values[0],
            "length": values[1],
            "probabilities": dict(zip(self.label_names, values[2 : 2 + labels])),
            **dict(zip(self.columns[2 + labels :], values[2 + labels :])),
        }
        self.handle.write(json.dumps(row) + "\n")

    def _cell(self, value) -> str | int:
        """A value of :meth:`values` as a tsv/csv cell: empty for None, 4 decimals for a
        probability, labels joined by ``;``, text cells as :func:`text_cells` says."""
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, list):
            return self._text(";".join(value))
        return self._text(value) if isinstance(value, str) else value


def domain_values(call: DomainCall | None) -> list:
    """The domain columns' values: empty (null) for a record not assessed (not scored)."""
    if call is None:
        return [None] * len(DOMAIN_COLUMNS)
    return [call.nearest, call.identity, call.coverage, call.distance, call.domain]


def model_writer(
    handle: IO[str], fmt: str, loaded: LoadedModel, *, raw_ids: bool = False, domain: bool = False
) -> PredictionWriter:
    """The writer of ``loaded``'s rows: its labels, thresholds and calibrated labels. ``synnav
    predict`` writes through one, and the Python API makes its DataFrame with one's
    :meth:`PredictionWriter.values`, so the two never differ."""
    calibration = loaded.calibration
    return PredictionWriter(
        handle,
        fmt,
        loaded.info.label_names,
        loaded.thresholds,
        raw_ids=raw_ids,
        calibrated=calibration.calibrated_labels if calibration is not None else [],
        domain=domain,
    )
