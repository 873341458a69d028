"""``synnav split``: a copy of a labelled dataset with a homology-aware train/dev/test split.

Proteins are clustered with MMseqs2 at a minimum sequence identity, and whole clusters are
assigned to splits (``homology.split_groups``), so no test protein has a close homologue in
training. Records are copied as they are (unknown fields included); only the split changes.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from synnav_cli.data import homology
from synnav_cli.data.compressed import content_suffix, open_text
from synnav_cli.data.dataset import SEQUENCE_COLUMNS, SPLIT_COLUMNS, read_dataset
from synnav_cli.errors import UserError
from synnav_cli.files import write_text_atomic

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


@dataclass
class SplitResult:
    out: Path
    clusters: int
    sizes: dict[str, int]  # proteins per split
    replaced_split: bool  # the input already carried a split, now replaced
    mmseqs_version: str
    mmseqs_options: list[str]


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> (0.7, 0.15, 0.15); validated by ``homology.split_groups``."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserError(
            f"fractions must be three numbers like 0.7,0.15,0.15, got {text!r}"
        ) from None
    if len(values) != 3:
        raise UserError(f"fractions must be three numbers (train,dev,test), got {text!r}")
    return values  # type: ignore[return-value]


def split_dataset(
    data: Path,
    out: Path,
    *,
    min_seq_id: float = 0.3,
    coverage: float = 0.8,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    threads: int = 1,
    force: bool = False,
) -> SplitResult:
    """Write ``out``: ``data`` with every record's split set by homology clusters.

    Arguments:
        data: labelled dataset (dataset.json, CSV or TSV), read and validated as ``train`` does.
        out: file to write, in the same format as ``data``; written atomically.
        min_seq_id: proteins aligned at this identity (0-1) or more share a cluster.
        coverage: minimum alignment coverage of both proteins (MMseqs2 ``-c``, cov-mode 0).
        seed: seed of the order in which clusters are dealt to the splits.
        fractions: target fractions of proteins in train, dev and test; they sum to 1.
        threads: MMseqs2 threads; 1 gives the same clusters on every run.
        force: replace an existing ``out`` (never ``data`` itself).

    Raises:
        UserError: bad arguments, unreadable data, an existing output, or mmseqs missing/failing.
    """
    data, out = Path(data), Path(out)
    if out.exists() and out.resolve() == data.resolve():
        raise UserError(f"--out {out} is the input dataset; write the split copy to another file")
    fmt = content_suffix(data)  # data.json.gz is JSON; the copy is written uncompressed
    if out.suffix.lower() != fmt:
        raise UserError(
            f"--out must have the same format as the input ({fmt or 'no extension'}, "
            f"uncompressed), got {out.name}"
        )
    if out.exists() and not force:
        raise UserError(f"{out} already exists; choose another --out or pass --force")
    if out.is_dir():
        raise UserError(f"--out {out} is a directory")
    # Validate everything cheap before running mmseqs, which takes a while on large data.
    options = homology.mmseqs_cluster_options(min_seq_id, coverage, threads)
    homology.check_fractions(fractions)
    version = homology.mmseqs_version()

    dataset = read_dataset(data)  # the same validation and sequence clean-up as training
    groups = homology.cluster_sequences(dataset.sequences, min_seq_id, coverage, threads)
    splits = homology.split_groups(groups, fractions, seed)
    if fmt == ".json":
        text = _json_with_splits(data, splits)
    else:
        text = _table_with_splits(data, splits, "," if fmt == ".csv" else "\t")
    write_text_atomic(out, text)
    counts = Counter(splits)
    return SplitResult(
        out=out,
        clusters=len(set(groups)),
        sizes={name: counts.get(name, 0) for name in homology.SPLIT_NAMES},
        replaced_split=dataset.splits is not None,
        mmseqs_version=version,
        mmseqs_options=options,
    )


def _json_with_splits(path: Path, splits: list[str]) -> str:
    with open_text(path) as handle:
        records = json.loads(handle.read())  # already validated by read_dataset
    for record, split in zip(records, splits, strict=True):
        record["split"] = split
    # One record per line, as data/dataset.json: valid JSON whose diffs stay line-sized.
    return "[\n" + ",\n".join(json.dumps(r, ensure_ascii=True) for r in records) + "\n]\n"


def _table_with_splits(path: Path, splits: list[str], delimiter: str) -> str:
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    split_column = next((c for c in SPLIT_COLUMNS if c in columns), None)
    if split_column is None:
        split_column = "split"
        # Next to the sequence column reads best; the readers do not care where it is.
        after = next((columns.index(c) + 1 for c in SEQUENCE_COLUMNS if c in columns), len(columns))
        columns.insert(after, split_column)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    for row, split in zip(rows, splits, strict=True):
        writer.writerow({**row, split_column: split})
    return buffer.getvalue()
