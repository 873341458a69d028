"""Reading the files :mod:`.embed_files` writes, in any format, a chunk of proteins at a time
(for ``synnav merge`` and for callers' own checks): a damaged or foreign file is one line.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synnav_cli.errors import UserError
from synnav_cli.predict.embed_files import EmbeddingChunk, format_of, require

# Rows read from a file at a time: bounded memory for any file size.
READ_ROWS = 1024


@dataclass
class EmbeddingFile:
    """An embedding file opened for reading: its sizes and metadata, then :meth:`chunks`."""

    meta: dict
    count: int
    dim: int
    dtype: np.dtype
    residue_total: int | None
    chunks: Callable[[], Iterator[EmbeddingChunk]]


def _meta(text) -> dict:
    try:
        meta = json.loads(text)
    except (TypeError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise UserError("its metadata is not synnav's")
    return meta


@contextmanager
def open_embeddings(path: Path) -> Iterator[EmbeddingFile]:
    """Open an embedding file that ``synnav embed`` wrote; anything else is a one-line error."""
    path = Path(path)
    fmt = format_of(path)
    module = require(fmt)
    if not path.is_file():
        raise UserError(f"not found: {path}")
    opener = {"npz": _open_npz, "hdf5": _open_h5, "parquet": _open_parquet}[fmt]
    with ExitStack() as stack:
        # Only opening and reading are guarded: errors of the caller's own block pass unchanged.
        with _unreadable(path):
            opened = stack.enter_context(opener(module, path))
        read = opened.chunks

        def chunks() -> Iterator[EmbeddingChunk]:
            with _unreadable(path):
                yield from read()

        opened.chunks = chunks
        yield opened


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """A damaged or foreign file as one line naming it."""
    try:
        yield
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise UserError(f"{path} is not an embedding file synnav can read ({error})") from None


def _chunk_bounds(count: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, READ_ROWS):
        yield start, min(start + READ_ROWS, count)


def _split(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    base = offsets[0]
    return [flat[a - base : b - base] for a, b in zip(offsets[:-1], offsets[1:])]


class _NpyRows:
    """Rows of one ``.npy`` member of an npz, read a few at a time."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        self.handle = archive.open(f"{name}.npy")
        version = np.lib.format.read_magic(self.handle)
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        self.shape, fortran, self.dtype = read(self.handle)
        if fortran or self.dtype.hasobject or len(self.shape) != 2:
            raise UserError(f"{name} is not a matrix of numbers as synnav embed writes it")

    def read(self, rows: int) -> np.ndarray:
        size = rows * self.shape[1] * self.dtype.itemsize
        data = self.handle.read(size)
        if len(data) != size:
            raise UserError(f"the file ends inside {self.handle.name}")
        return np.frombuffer(data, dtype=self.dtype).reshape(rows, self.shape[1])


@contextmanager
def _open_npz(_module, path: Path) -> Iterator[EmbeddingFile]:
    with np.load(path, allow_pickle=False) as small, zipfile.ZipFile(path) as archive:
        meta = _meta(str(small["metadata"]))
        ids, lengths = small["ids"], small["lengths"]
        offsets = small["offsets"] if "offsets" in small.files else None
        header = _NpyRows(archive, "embeddings")

        def chunks() -> Iterator[EmbeddingChunk]:
            pooled = _NpyRows(archive, "embeddings")
            residues = _NpyRows(archive, "residue_embeddings") if offsets is not None else None
            for a, b in _chunk_bounds(len(ids)):
                rows = None
                if residues is not None:
                    flat = residues.read(int(offsets[b] - offsets[a]))
                    rows = _split(flat, offsets[a : b + 1])
                names = [str(i) for i in ids[a:b]]
                yield EmbeddingChunk(names, lengths[a:b], pooled.read(b - a), rows)

        total = int(offsets[-1]) if offsets is not None else None
        yield EmbeddingFile(meta, len(ids), header.shape[1], header.dtype, total, chunks)


@contextmanager
def _open_h5(h5py, path: Path) -> Iterator[EmbeddingFile]:
    with h5py.File(path, "r") as f:
        meta = _meta(f.attrs.get("metadata"))
        pooled = f["embeddings"]
        offsets = f["offsets"][:] if "offsets" in f else None

        def chunks() -> Iterator[EmbeddingChunk]:
            for a, b in _chunk_bounds(len(pooled)):
                rows = None
                if offsets is not None:
                    flat = f["residue_embeddings"][offsets[a] : offsets[b]]
                    rows = _split(flat, offsets[a : b + 1])
                ids = list(f["ids"].asstr()[a:b])
                yield EmbeddingChunk(ids, f["lengths"][a:b], pooled[a:b], rows)

        total = int(offsets[-1]) if offsets is not None else None
        yield EmbeddingFile(meta, len(pooled), pooled.shape[1], pooled.dtype, total, chunks)


@contextmanager
def _open_parquet(pq, path: Path) -> Iterator[EmbeddingFile]:
    with pq.ParquetFile(path) as f:
        schema = f.schema_arrow
        meta = _meta((schema.metadata or {}).get(b"synnav"))
        kind = schema.field("embedding").type
        per_residue = "residue_embeddings" in schema.names
        dtype = np.dtype(kind.value_type.to_pandas_dtype())

        def chunks() -> Iterator[EmbeddingChunk]:
            for batch in f.iter_batches(batch_size=READ_ROWS):
                pooled = batch.column("embedding").flatten().to_numpy(zero_copy_only=False)
                rows = None
                if per_residue:
                    column = batch.column("residue_embeddings")
                    flat = column.flatten().flatten().to_numpy(zero_copy_only=False)
                    sizes = column.value_lengths().to_numpy(zero_copy_only=False)
                    offsets = np.concatenate([[0], np.cumsum(sizes)])
                    rows = _split(flat.reshape(-1, kind.list_size), offsets)
                lengths = batch.column("length").to_numpy(zero_copy_only=False)
                ids = batch.column("id").to_pylist()
                yield EmbeddingChunk(ids, lengths, pooled.reshape(-1, kind.list_size), rows)

        total = meta.get("residues") if per_residue else None
        if per_residue and not isinstance(total, int):
            raise UserError("its metadata does not give the number of residues")
        yield EmbeddingFile(meta, f.metadata.num_rows, kind.list_size, dtype, total, chunks)


def read_embeddings(path: Path) -> dict[str, np.ndarray | dict]:
    """A whole file as the npz layout (``ids``, ``lengths``, ``embeddings``, ``offsets`` and
    ``residue_embeddings`` when present, ``metadata``): for tests and small files."""
    with open_embeddings(path) as opened:
        chunks = list(opened.chunks())
        ids = [i for c in chunks for i in c.ids]
        found: dict = {
            "metadata": opened.meta,
            "ids": np.array(ids, dtype=str),
            "lengths": np.concatenate([c.lengths for c in chunks] or [np.zeros(0, np.int64)]),
            "embeddings": np.concatenate(
                [c.pooled for c in chunks] or [np.zeros((0, opened.dim), opened.dtype)]
            ),
        }
        if opened.residue_total is not None:
            rows = [r for c in chunks for r in c.residues or ()]
            found["offsets"] = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
            found["residue_embeddings"] = (
                np.concatenate(rows) if rows else np.zeros((0, opened.dim), opened.dtype)
            )
    return found
