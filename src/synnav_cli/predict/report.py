"""A run at a glance: what a `synnav predict` output holds, before anyone opens 20,000 rows.

:func:`summarise` reads a prediction table in any format predict writes (tsv, csv, JSON lines;
gzip, bzip2 or xz, told by their first bytes) and counts: records by status, proteins scored,
proteins with no label called, and per label the proteins called, the proteins whose most likely
label it is, the mean probability and a 20-bin histogram of probabilities.

The file is someone else's: it is read as a stream (memory does not grow with its rows), every
line and cell is bounded, a probability must be a number from 0 to 1, and no text from it
reaches a message or the report but the label names of its header, which must be printable.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from synnav_cli.data.compressed import open_text
from synnav_cli.errors import UserError, quoted

BINS = 20  # histogram bins of width 0.05 over [0, 1]
MAX_LINE = 1 << 20  # bytes a row may take; a predict row is well under a kilobyte
MAX_LABELS = 256
MAX_LABEL_NAME = 100
# Statuses predict writes, in the order a report lists them (windowed:N and invalid: why are
# counted under their first word); anything else counts as "other".
STATUSES = ("ok", "truncated", "windowed", "skipped", "short", "nucleotide", "invalid")


def original_text(cell: str) -> str:
    """A tsv/csv text cell without the ``'`` predict puts ahead of a formula's first sign
    (``writer.spreadsheet_text``). Not imported from the writer: that pulls in numpy and the
    model stack, seconds of start-up for a command that reads text."""
    return cell.removeprefix("'")


@dataclass
class LabelSummary:
    called: int = 0  # proteins whose `predicted` names the label
    top: int = 0  # proteins whose most likely label it is
    total: float = 0.0  # sum of probabilities, for the mean
    histogram: list[int] = field(default_factory=lambda: [0] * BINS)


@dataclass
class Summary:
    source: str
    format: str
    labels: dict[str, LabelSummary]
    records: int = 0
    statuses: Counter = field(default_factory=Counter)
    scored: int = 0  # rows with probabilities
    no_call: int = 0  # scored rows with no label called

    def as_dict(self) -> dict:
        """The summary as ``synnav report --format json`` prints it."""
        return {
            "file": self.source,
            "format": self.format,
            "records": self.records,
            "status": {name: self.statuses.get(name, 0) for name in (*STATUSES, "other")},
            "scored": self.scored,
            "not_scored": self.records - self.scored,
            "no_call": self.no_call,
            "labels": {
                name: {
                    "called": s.called,
                    "top": s.top,
                    "mean_probability": round(s.total / self.scored, 4) if self.scored else None,
                    "histogram": s.histogram,
                }
                for name, s in self.labels.items()
            },
            "histogram_bins": [round(i / BINS, 2) for i in range(BINS + 1)],
        }


def summarise(source: str | Path) -> Summary:
    """Count what the prediction table ``source`` (a path, or ``-`` for standard input) holds.

    Raises :class:`UserError` for a file that is not a predict output (no id, length, label,
    predicted and status columns), a row that does not fit its header, a probability that is
    not a number from 0 to 1, an overlong line or label name, or undecodable text.
    """
    name = "standard input" if str(source) == "-" else str(source)
    try:
        with open_text(source, name) as handle:
            first = handle.readline(MAX_LINE + 1)
            if not first.strip():
                raise UserError(f"{name} is empty: no prediction table to report on")
            if len(first) > MAX_LINE:
                raise UserError(f"{name}: a line is over {MAX_LINE:,} characters")
            if first.lstrip().startswith("{"):
                return _count(name, "jsonl", _json_rows(name, first, handle))
            delimiter = "\t" if "\t" in first else ","
            fmt = "tsv" if delimiter == "\t" else "csv"
            return _count(name, fmt, _table_rows(name, first, handle, delimiter))
    except UnicodeDecodeError:
        raise UserError(f"{name} is not UTF-8 text: not a synnav predict output") from None


Row = tuple[list[float | None], list[str], str, str | None]  # probabilities, called, status, top


def _labels_of(name: str, labels: list[str]) -> list[str]:
    if not labels or len(labels) > MAX_LABELS:
        raise UserError(f"{name} has {len(labels)} label columns; a predict output has 1 to 256")
    for label in labels:
        if not label or len(label) > MAX_LABEL_NAME or not label.isprintable():
            raise UserError(f"{name}: label column {quoted(label)} is not a label name")
    if len(set(labels)) != len(labels):
        raise UserError(f"{name}: a label column appears twice")
    return labels


def _table_rows(name: str, first: str, handle, delimiter: str) -> Iterator[Row]:
    header = [original_text(cell) for cell in next(csv.reader([first], delimiter=delimiter))]
    if header[:2] != ["id", "length"] or "predicted" not in header or "status" not in header:
        raise UserError(
            f"{name} is not a synnav predict output: its header does not start with id, length, "
            "the labels, predicted, status"
        )
    end = header.index("predicted")
    labels = _labels_of(name, header[2:end])
    yield labels  # type: ignore[misc] - the first item is the label list
    where = {column: header.index(column) for column in ("predicted", "status")}
    top = header.index("top") if "top" in header else None
    line = 1
    for line, cells in enumerate(csv.reader(_bounded(name, handle), delimiter=delimiter), 2):
        if len(cells) != len(header):
            raise UserError(f"{name}, line {line}: {len(cells)} cells under {len(header)} columns")
        yield (
            [_probability(name, line, cell) for cell in cells[2:end]],
            [c for c in original_text(cells[where["predicted"]]).split(";") if c],
            cells[where["status"]],
            original_text(cells[top]) or None if top is not None else None,
        )


def _json_rows(name: str, first: str, handle) -> Iterator[Row]:
    labels = None
    for line, text in enumerate(_lines(name, first, handle), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
            probabilities = row["probabilities"]
            called, status, top = row["predicted"], row["status"], row.get("top")
            ok = isinstance(probabilities, dict) and isinstance(called, list)
            ok = ok and isinstance(status, str) and (top is None or isinstance(top, str))
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok or not all(isinstance(c, str) for c in called):
            raise UserError(
                f"{name}, line {line}: not a synnav predict row (id, length, probabilities, "
                "predicted, status)"
            )
        if labels is None:
            labels = _labels_of(name, list(probabilities))
            yield labels  # type: ignore[misc]
        if list(probabilities) != labels:
            raise UserError(f"{name}, line {line}: its labels differ from the first row's")
        values = [_probability(name, line, probabilities[label]) for label in labels]
        yield values, called, status, top
    if labels is None:
        raise UserError(f"{name} holds no rows: no prediction table to report on")


def _lines(name: str, first: str, handle) -> Iterator[str]:
    yield first
    yield from _bounded(name, handle)


def _bounded(name: str, handle) -> Iterator[str]:
    while text := handle.readline(MAX_LINE + 1):
        if len(text) > MAX_LINE:
            raise UserError(f"{name}: a line is over {MAX_LINE:,} characters")
        yield text


def _probability(name: str, line: int, value) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        raise UserError(f"{name}, line {line}: {quoted(value, 40)} is not a probability")
    return number


def _count(name: str, fmt: str, rows: Iterator) -> Summary:
    try:
        labels = next(rows)
        summary = Summary(name, fmt, {label: LabelSummary() for label in labels})
        known = set(labels)
        for values, called, status, top in rows:
            summary.records += 1
            kind = status.split(":")[0].strip()
            summary.statuses[kind if kind in STATUSES else "other"] += 1
            if all(v is None for v in values):
                continue
            if any(v is None for v in values):
                raise UserError(f"{name}: a row has some probabilities but not all")
            summary.scored += 1
            summary.no_call += not called
            for label, value in zip(labels, values):
                entry = summary.labels[label]
                entry.total += value
                entry.histogram[min(BINS - 1, int(value * BINS))] += 1
            for label in set(called) & known:
                summary.labels[label].called += 1
            if top in known:
                summary.labels[top].top += 1
    except csv.Error as error:
        raise UserError(f"{name} is not a readable table: {error}") from None
    return summary


def format_text(summary: Summary) -> str:
    """The summary as a few lines and one table, for a person."""
    data = summary.as_dict()
    status = ", ".join(f"{k} {v:,}" for k, v in data["status"].items() if v)
    scored = summary.scored
    lines = [
        f"{summary.source} ({summary.format}): {summary.records:,} records ({status or 'none'})",
        (
            f"scored: {scored:,}; not scored: {data['not_scored']:,} "
            "(skipped, short, nucleotide or invalid)"
        ),
        f"no label called: {summary.no_call:,} of {scored:,} scored"
        + (f" ({summary.no_call / scored:.1%})" if scored else ""),
        "",
    ]
    headers = ["label", "called", "share", "top", "mean p"]
    rows = [
        [
            label,
            f"{s.called:,}",
            f"{s.called / scored:.1%}" if scored else "n/a",
            f"{s.top:,}",
            f"{s.total / scored:.3f}" if scored else "n/a",
        ]
        for label, s in summary.labels.items()
    ]
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    for row in [headers, *rows]:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    lines.append("share: of the scored proteins; top: proteins whose most likely label it is")
    return "\n".join(lines) + "\n"


def write_figure(summary: Summary, out_dir: Path) -> Path:
    """``probabilities.png`` in ``out_dir``: one panel per label, the histogram of its
    probabilities over the scored proteins (log scale), with how many were called."""
    from synnav_cli.files import replace_atomically
    from synnav_cli.plots import pyplot

    plt = pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    count = len(summary.labels)
    columns = min(3, count)
    rows = math.ceil(count / columns)
    figure, panels = plt.subplots(
        rows, columns, figsize=(3.6 * columns, 2.6 * rows), squeeze=False, sharex=True
    )
    edges = [i / BINS for i in range(BINS)]
    for k, (label, s) in enumerate(summary.labels.items()):
        axes = panels[k // columns][k % columns]
        axes.bar(edges, s.histogram, width=1 / BINS, align="edge", color="#2e86c1")
        if any(s.histogram):
            axes.set_yscale("log")
        axes.set_title(f"{label}: {s.called:,} called", fontsize=9)
        axes.set_xlim(0, 1)
    for k in range(count, rows * columns):
        panels[k // columns][k % columns].axis("off")
    for axes in panels[-1]:
        axes.set_xlabel("probability")
    figure.suptitle(f"{summary.scored:,} scored proteins", fontsize=10)
    figure.tight_layout()
    path = out_dir / "probabilities.png"
    replace_atomically(path, lambda tmp: figure.savefig(tmp, dpi=110, format="png"))
    plt.close(figure)
    return path
