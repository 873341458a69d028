"""``synnav variants`` rows: reference and variant probabilities, their difference, the largest
change, a status; ranked on request; written as TSV, CSV or JSON lines.

Columns: ``id, variant, length, variant_length, reference_<label>..., variant_<label>...,
delta_<label>..., largest_change, largest_change_label, status, calibration`` and, unless left
out, the variant's applicability-domain columns (``nearest_training, identity, coverage,
embedding_distance, domain``), as in predict's rows. ``delta`` is variant minus reference;
``largest_change`` is the delta of largest size (sign kept) among the labels the model had
training data for, ``largest_change_label`` its label (the first on a tie; empty when nothing
changed). ``calibration`` says which label columns hold calibrated probabilities (empty when
not scored).
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import IO

import numpy as np

from synnav_cli.data.dataset import column_name
from synnav_cli.data.variants import Variant
from synnav_cli.domain.assess import DOMAIN_COLUMNS
from synnav_cli.errors import UserError
from synnav_cli.predict.writer import FORMATS, Prediction, domain_values, text_cells

SORTS = ("input", "delta")


@dataclass
class VariantRow:
    variant: Variant
    reference: Prediction | None  # None for an invalid variant
    changed: Prediction | None
    site: int | None = None  # the first position changed

    @property
    def delta(self) -> np.ndarray | None:
        """Variant minus reference per label; None unless both were scored."""
        if self.reference is None or self.changed is None:
            return None
        if self.reference.probabilities is None or self.changed.probabilities is None:
            return None
        return self.changed.probabilities - self.reference.probabilities

    def status(self, max_length: int) -> str:
        """ok; invalid: why; a status predict would give either sequence (short, skipped,
        truncated, windowed:N), said once when both share it; and for a truncated protein
        whose change lies past the part scored, that the site was not scored."""
        if self.variant.problem is not None:
            return f"invalid: {self.variant.problem}"
        ref, var = self.reference.status, self.changed.status  # type: ignore[union-attr]
        status = ref if ref == var else f"reference {ref}; variant {var}"
        if "truncated" in status and self.site is not None and self.site > max_length:
            status += f": the change at {self.site} is past residue {max_length}, not scored"
        return status


def largest_change(
    delta: np.ndarray | None, thresholds: list[float]
) -> tuple[float, int | None] | None:
    """The delta of largest size among labels with training data (a finite threshold; all
    labels when none has one), and its index (None when nothing changed); the first label wins
    a tie."""
    if delta is None:
        return None
    ranked = np.isfinite(np.asarray(thresholds))
    if not ranked.any():
        ranked[:] = True
    sizes = np.where(ranked, np.abs(delta), -1.0)
    best = int(np.argmax(sizes))  # argmax returns the first of equal values
    return float(delta[best]), (best if delta[best] != 0 else None)


def sort_rows(rows: list[VariantRow], sort: str, thresholds: list[float]) -> list[VariantRow]:
    """``input``: as given. ``delta``: largest change (in size) first; rows with equal changes
    keep their input order, and rows not scored come last, in input order."""
    if sort == "input":
        return rows
    if sort not in SORTS:
        raise UserError(f"unknown sort {sort!r}; choose {', '.join(SORTS)}")

    def key(row: VariantRow) -> tuple[int, float]:
        change = largest_change(row.delta, thresholds)
        return (1, 0.0) if change is None else (0, -abs(round(change[0], 4)))

    return sorted(rows, key=key)  # sorted is stable: ties keep input order


def columns(label_names: list[str], *, domain: bool = False) -> list[str]:
    names = [column_name(n) for n in label_names]
    # Columns added later go last, so that every earlier column keeps its place.
    return [
        "id",
        "variant",
        "length",
        "variant_length",
        *(f"reference_{n}" for n in names),
        *(f"variant_{n}" for n in names),
        *(f"delta_{n}" for n in names),
        "largest_change",
        "largest_change_label",
        "status",
        "calibration",
        *(DOMAIN_COLUMNS if domain else []),
    ]


class VariantWriter:
    """Rows as tsv or csv (the caller writes :attr:`header`; a resumed file has it) or jsonl;
    empty cells (null) where not scored. Text cells as :func:`writer.text_cells` says."""

    def __init__(
        self,
        handle: IO[str],
        fmt: str,
        label_names: list[str],
        thresholds: list[float],
        max_length: int,
        *,
        raw_ids: bool = False,
        calibrated: list[str] = (),
        domain: bool = False,
    ) -> None:
        if fmt not in FORMATS:
            raise UserError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
        self.handle, self.thresholds, self.max_length = handle, thresholds, max_length
        self.names = [column_name(n) for n in label_names]
        self.columns = columns(label_names, domain=domain)
        self.domain = domain
        self._text = text_cells(fmt, raw_ids)
        self._calibration = calibration_text(calibrated, label_names)
        self._csv = None
        self.header = ""
        if fmt != "jsonl":
            dialect = {"delimiter": "\t" if fmt == "tsv" else ",", "lineterminator": "\n"}
            line = io.StringIO()
            csv.writer(line, **dialect).writerow([self._text(c) for c in self.columns])
            self.header = line.getvalue()
            self._csv = csv.writer(handle, **dialect)

    def values(self, row: VariantRow) -> list:
        """``row``'s value per :attr:`columns` entry, before any format: numbers rounded to 4
        decimals, None where there is no value (a variant not scored). Every format writes
        these, and a DataFrame can be made of them, so the two never differ."""
        count = len(self.names)

        def rounded(values) -> list:
            return [None] * count if values is None else [round(float(v), 4) for v in values]

        delta = row.delta
        change = largest_change(delta, self.thresholds)
        return [
            row.variant.id,
            row.variant.notation,
            row.reference.length if row.reference is not None else None,
            row.changed.length if row.changed is not None else None,
            *rounded(_probabilities(row.reference)),
            *rounded(_probabilities(row.changed)),
            *rounded(delta),
            None if change is None else round(change[0], 4),
            _label(self.names, change),
            row.status(self.max_length),
            self._calibration if delta is not None else None,
            # The variant's applicability domain: how far it is from the training proteins.
            *(domain_values(_domain(row.changed)) if self.domain else []),
        ]

    def write(self, row: VariantRow) -> None:
        values = self.values(row)
        count = len(self.names)
        if self._csv is None:
            blocks = [values[4 + k * count : 4 + (k + 1) * count] for k in range(3)]
            named = [None if b[0] is None else dict(zip(self.names, b)) for b in blocks]
            keys = ["id", "variant", "length", "variant_length"]
            tail = self.columns[4 + 3 * count :]
            record = {
                **dict(zip(keys, values[:4])),
                "reference_probabilities": named[0],
                "variant_probabilities": named[1],
                "delta": named[2],
                **dict(zip(tail, values[4 + 3 * count :])),
            }
            self.handle.write(json.dumps(record) + "\n")
            return
        text = self._text
        cells = []
        for position, value in enumerate(values):
            if value is None:
                cells.append("")
            elif isinstance(value, str):
                cells.append(text(value))
            elif isinstance(value, int):
                cells.append(value)
            elif 4 + 2 * count <= position <= 4 + 3 * count:  # differences, the largest: signed
                cells.append(f"{value:+.4f}")
            else:
                cells.append(f"{value:.4f}")
        self._csv.writerow(cells)


def calibration_text(calibrated: list[str], label_names: list[str]) -> str:
    """What the calibration column says, as in predict's rows: ``calibrated``, ``uncalibrated``
    or ``calibrated: ER;nucleus`` (the labels whose probabilities are)."""
    shown = [column_name(name) for name in calibrated]
    if not shown:
        return "uncalibrated"
    if len(shown) == len(label_names):
        return "calibrated"
    return "calibrated: " + ";".join(shown)


def _label(names: list[str], change: tuple[float, int | None] | None) -> str | None:
    """The label of the largest change; None when nothing changed (no label moved most)."""
    return None if change is None or change[1] is None else names[change[1]]


def _domain(prediction: Prediction | None):
    return None if prediction is None else prediction.domain


def _probabilities(prediction: Prediction | None) -> np.ndarray | None:
    return None if prediction is None else prediction.probabilities
