"""Labelled datasets for training and evaluation (dataset.json, CSV, TSV), and their splits.

Labels are a float matrix with NaN where a label is unknown for a protein. Public data is often
positive-only or covers some compartments only; an unknown label must never be trained on as a
negative, so nothing here turns a missing value into 0.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synnav_cli.data import homology
from synnav_cli.data.compressed import content_suffix, open_text
from synnav_cli.data.fasta import normalise_sequence
from synnav_cli.errors import UserError, quoted


def column_name(label: str) -> str:
    """A label as an output column: no spaces (``excitatory synapse`` -> ``excitatory_synapse``),
    so that R, pandas and ``--threshold NAME=X`` take it as it is."""
    return "_".join(label.split())


def same_label(a: str, b: str) -> bool:
    """Whether two spellings name one label (case, spaces and underscores aside)."""
    return column_name(a).lower() == column_name(b).lower()


SPLITS = homology.SPLIT_NAMES  # one definition, shared with the split rule


@dataclass
class Dataset:
    """Proteins with multi-label annotations. ``labels[i, j]`` is 1, 0 or NaN (unknown)."""

    label_names: list[str]
    entries: list[str]
    sequences: list[str]
    labels: np.ndarray  # float32 [proteins, labels]
    splits: list[str] | None  # None when the file carried no split

    def __len__(self) -> int:
        return len(self.entries)

    def subset(self, split: str) -> Dataset:
        if self.splits is None:
            raise UserError("the dataset has no split assigned")
        index = [i for i, s in enumerate(self.splits) if s == split]
        return self.take(index)

    def take(self, index: list[int]) -> Dataset:
        return Dataset(
            self.label_names,
            [self.entries[i] for i in index],
            [self.sequences[i] for i in index],
            self.labels[index],
            None if self.splits is None else [self.splits[i] for i in index],
        )

    def content_hash(self) -> str:
        """sha256 over entries, sequences and labels: identifies the data a model saw."""
        digest = hashlib.sha256()
        digest.update(json.dumps(self.label_names).encode())
        for entry, sequence, row in zip(self.entries, self.sequences, self.labels):
            values = ["" if np.isnan(v) else str(int(v)) for v in row]
            digest.update(f"{entry}\t{sequence}\t{','.join(values)}\n".encode())
        return digest.hexdigest()

    def split_hash(self) -> str:
        digest = hashlib.sha256()
        for entry, split in zip(self.entries, self.splits or []):
            digest.update(f"{entry}\t{split}\n".encode())
        return digest.hexdigest()

    def label_counts(self) -> dict[str, dict[str, int]]:
        counts = {}
        for j, name in enumerate(self.label_names):
            column = self.labels[:, j]
            counts[name] = {
                "positive": int((column == 1).sum()),
                "negative": int((column == 0).sum()),
                "unknown": int(np.isnan(column).sum()),
            }
        return counts


def _label_value(value: object, entry: str, name: str) -> float:
    if (
        value is None
        or value == ""
        or (isinstance(value, str) and value.lower() in {"na", "nan", "null"})
    ):
        return np.nan
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip() in {"0", "1", "0.0", "1.0"}:
        return float(value.strip())
    raise UserError(
        f"label {quoted(name)} of {quoted(entry)} is {quoted(value)}; expected 0, 1 or empty/null"
    )


def _split_value(value: object, entry: str) -> str | None:
    if value is None or value == "":
        return None
    split = str(value).strip().lower()
    split = {"val": "dev", "valid": "dev", "validation": "dev"}.get(split, split)
    if split not in SPLITS:
        raise UserError(f"split of {quoted(entry)} is {quoted(value)}; expected train, dev or test")
    return split


def _first_key(record: dict, *names: str) -> object:
    for name in names:
        if name in record:
            return record[name]
    return None


def _records_from_json(path: Path) -> Iterator[tuple[str, str, dict, object]]:
    try:
        with open_text(path) as handle:
            payload = json.loads(handle.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON: {error}") from None
    except RecursionError:
        raise UserError(f"{path} is not a dataset: its JSON is nested too deeply") from None
    if not isinstance(payload, list):
        raise UserError(f"{path}: expected a JSON list of records")
    for number, record in enumerate(payload, 1):
        if not isinstance(record, dict):
            raise UserError(f"{path}: record {number} is not an object")
        entry = _first_key(record, "entry", "Entry", "id")
        sequence = _first_key(record, "sequence", "Sequence")
        labels = record.get("labels")
        if entry is None or sequence is None or not isinstance(labels, dict):
            raise UserError(
                f"{path}: record {number} needs 'entry', 'sequence' and a 'labels' object"
            )
        if not isinstance(sequence, str):
            raise UserError(f"{path}: the sequence of record {number} is not text")
        yield str(entry), sequence, labels, record.get("split")


SEQUENCE_COLUMNS = ("sequence", "Sequence", "seq")
ENTRY_COLUMNS = ("entry", "Entry", "id", "uniprot_id")
SPLIT_COLUMNS = ("split", "Split")


def _records_from_table(path: Path, delimiter: str) -> Iterator[tuple[str, str, dict, object]]:
    try:
        yield from _table_rows(path, delimiter)
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text ({error.reason})") from None
    except csv.Error as error:
        raise UserError(f"{path} is not a valid table: {error}") from None


def _table_rows(path: Path, delimiter: str) -> Iterator[tuple[str, str, dict, object]]:
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = reader.fieldnames or []
        entry_col = next((c for c in ENTRY_COLUMNS if c in columns), None)
        sequence_col = next((c for c in SEQUENCE_COLUMNS if c in columns), None)
        if entry_col is None or sequence_col is None:
            raise UserError(f"{path}: needs an 'entry' (or 'id') column and a 'sequence' column")
        split_col = next((c for c in SPLIT_COLUMNS if c in columns), None)
        label_cols = [c for c in columns if c not in {entry_col, sequence_col, split_col}]
        for row in reader:
            # DictReader marks a short row with None values and a long one with a None key.
            if None in row or None in row.values():
                fields = sum(v is not None for k, v in row.items() if k is not None) + len(
                    row.get(None, [])
                )
                raise UserError(
                    f"{path}: line {reader.line_num} has {fields} fields "
                    f"where the header has {len(columns)}"
                )
            labels = {c: row[c] for c in label_cols}
            yield (
                row[entry_col],
                row[sequence_col],
                labels,
                row.get(split_col) if split_col else None,
            )


def read_dataset(path: str | Path) -> Dataset:
    """Read a labelled dataset: the origin's ``dataset.json`` or a CSV/TSV table.

    Any of them may be gzip, bzip2 or xz (``data.json.gz``): the format is the suffix before
    the compression suffix, the compression is read from the file's first bytes.
    The label set is the union of label names in the file, in order of first appearance.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset not found: {path}")
    suffix = content_suffix(path)
    if suffix == ".json":
        records = _records_from_json(path)
    elif suffix in {".csv", ".tsv", ".txt"}:
        records = _records_from_table(path, "," if suffix == ".csv" else "\t")
    else:
        raise UserError(f"{path}: unknown dataset format; use .json, .csv or .tsv")
    return _build_dataset(list(records), str(path))


def _build_dataset(records: list[tuple[str, str, dict, object]], label: str) -> Dataset:
    if not records:
        raise UserError(f"{label} holds no records")
    label_names: list[str] = []
    for _, _, labels, _ in records:
        for name in labels:
            if name not in label_names:
                label_names.append(name)
    if not label_names:
        raise UserError(f"{label} has no label columns")
    entries, sequences, splits = [], [], []
    matrix = np.full((len(records), len(label_names)), np.nan, dtype=np.float32)
    seen: set[str] = set()
    for i, (entry, raw, labels, split) in enumerate(records):
        if entry in seen:
            raise UserError(f"duplicate entry {quoted(entry)} in {label}")
        seen.add(entry)
        entries.append(entry)
        sequences.append(normalise_sequence(raw, entry))
        splits.append(_split_value(split, entry))
        for j, name in enumerate(label_names):
            matrix[i, j] = _label_value(labels.get(name), entry, name)
    has_split = [s is not None for s in splits]
    if any(has_split) and not all(has_split):
        missing = has_split.count(False)
        raise UserError(f"{label}: {missing} records have no split while others do")
    return Dataset(label_names, entries, sequences, matrix, splits if all(has_split) else None)


def assign_splits(
    dataset: Dataset, *, seed: int = 0, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
) -> Dataset:
    """Keep the dataset's own split; otherwise split 70/15/15 at protein level, seeded.

    Identical sequences form one group and always land in the same split, so a protein listed
    twice cannot be in train and test at once.
    """
    if dataset.splits is not None:
        return dataset
    groups: dict[str, int] = {}
    group_ids = [groups.setdefault(s, len(groups)) for s in dataset.sequences]
    splits = homology.split_groups(group_ids, fractions, seed)
    return Dataset(dataset.label_names, dataset.entries, dataset.sequences, dataset.labels, splits)
