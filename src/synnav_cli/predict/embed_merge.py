"""``synnav merge`` for ``synnav embed --shard I/N`` files: one file in input order.

Every part records its shard (``"I/N"``), the sha256 and record count of the whole input, and
what made its vectors (see :mod:`.embed_files`). Parts that are not shards 1..N of one input,
embedded the same way, are refused in one line before anything is written; the rows are then
interleaved back (record ``j`` is in part ``j % N``) a chunk at a time, so memory stays bounded.
Parts may be in any of the formats, and the merged file in another.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from synnav_cli import console
from synnav_cli.data.fasta import read_fasta
from synnav_cli.errors import UserError
from synnav_cli.files import atomic_path, check_output_file, terminated_as_interrupt
from synnav_cli.predict.embed_files import (
    EmbeddingChunk,
    EmbeddingSource,
    format_of,
    require,
    write_embeddings,
)
from synnav_cli.predict.embed_read import READ_ROWS, EmbeddingFile, open_embeddings
from synnav_cli.predict.resumable import input_digest

# Metadata that differs from part to part, or that the writer fills in.
_PER_PART = {"shard", "proteins", "residues"}


def merge_embeddings(parts: Sequence[Path], out: Path, fasta: str | None = None) -> int:
    """Interleave the embedding files of ``--shard 1/N`` ... ``N/N`` (in that order) into ``out``.

    With ``fasta`` the parts must have been embedded from it (same records, same order), and
    every identifier is checked against it. Returns the number of proteins.
    """
    if not parts:
        raise UserError("merge needs the part files, in shard order")
    out = Path(out)
    fmt = format_of(out)
    require(fmt)
    check_output_file(out, inputs=[*parts, *([fasta] if fasta else [])])
    with ExitStack() as stack:
        opened = [stack.enter_context(open_embeddings(Path(p))) for p in parts]
        _check_parts(parts, opened)
        first = opened[0].meta
        # Sizes the parts declare are checked against the FASTA before anything is read.
        if fasta is not None and input_digest(fasta) != (
            first.get("input_sha256"),
            first.get("input_records"),
        ):
            raise UserError(f"the parts were embedded from another input than {fasta}")
        meta = {k: v for k, v in first.items() if k not in _PER_PART}
        meta["shard"] = None
        per_residue = opened[0].residue_total is not None
        source = EmbeddingSource(
            sum(f.count for f in opened),
            opened[0].dim,
            opened[0].dtype,
            sum(f.residue_total for f in opened) if per_residue else None,
            meta,
            lambda: _interleave(opened, fasta),
        )
        try:
            with terminated_as_interrupt(), atomic_path(out) as tmp:
                write_embeddings(tmp, source, fmt)
        except OSError as error:
            raise UserError(f"writing {out} failed: {error.strerror or error}") from None
    console.info(f"Merged {len(parts)} parts ({source.count} proteins) into {out}.")
    return source.count


def _check_parts(parts: Sequence[Path], opened: list[EmbeddingFile]) -> None:
    """One line for the first thing that shows the parts are not shards 1..N of one run."""
    count, first = len(parts), opened[0].meta
    for position, (part, found) in enumerate(zip(parts, opened), start=1):
        meta = found.meta
        if meta.get("format") != "synnav-embeddings":
            raise UserError(f"{part} is not a file synnav embed wrote")
        shard = meta.get("shard")
        if not shard:
            raise UserError(f"{part} was embedded without --shard; there is nothing to merge")
        if shard != f"{position}/{count}":
            raise UserError(
                f"{part} is shard {shard} but is given as part {position} of {count}: "
                f"give all the parts, in shard order"
            )
        if meta.get("input_sha256") != first.get("input_sha256"):
            raise UserError(f"{part} was embedded from another input than {parts[0]}")
        for key in sorted((set(meta) | set(first)) - _PER_PART):
            if meta.get(key) != first.get(key):
                raise UserError(f"{part} was embedded differently from {parts[0]} ({key} differs)")
        if (found.dim, found.dtype, found.residue_total is None) != (
            opened[0].dim,
            opened[0].dtype,
            opened[0].residue_total is None,
        ):
            raise UserError(f"{part} holds vectors of another size or type than {parts[0]}")
        records = first.get("input_records")
        if not isinstance(records, int) or found.count != len(range(position - 1, records, count)):
            raise UserError(
                f"{part} holds {found.count} proteins, not the share of shard {shard} "
                f"of {records} records: it is incomplete or altered"
            )


def _proteins(opened: EmbeddingFile) -> Iterator[tuple]:
    for chunk in opened.chunks():
        for k, name in enumerate(chunk.ids):
            rows = None if chunk.residues is None else chunk.residues[k]
            yield name, chunk.lengths[k], chunk.pooled[k], rows


def _interleave(opened: list[EmbeddingFile], fasta: str | None) -> Iterator[EmbeddingChunk]:
    streams = [_proteins(f) for f in opened]
    expected = (record.id for record in read_fasta(fasta)) if fasta is not None else None
    total = sum(f.count for f in opened)
    for start in range(0, total, READ_ROWS):
        end = min(start + READ_ROWS, total)
        rows = [next(streams[j % len(streams)], None) for j in range(start, end)]
        if None in rows:  # the parts' own checks say which first; this is the last guard
            raise UserError("the parts hold fewer proteins than they declare")
        if expected is not None:
            for name, *_ in rows:
                if (want := next(expected, None)) != name:
                    raise UserError(f"the parts have {name!r} where the input has {want!r}")
        yield EmbeddingChunk(
            [r[0] for r in rows],
            np.array([r[1] for r in rows], dtype=np.int64),
            np.stack([r[2] for r in rows]),
            None if rows[0][3] is None else [r[3] for r in rows],
        )
