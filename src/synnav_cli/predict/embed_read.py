"""Reading the files :mod:`.embed_files` writes, in any format, a chunk of proteins at a time
(for ``synnav merge`` and for callers' own checks): a damaged or foreign file is one line.

A file may come from anyone, so only what synnav writes is read: the arrays of the expected
names, kinds and shapes (an HDF5 dataset stored in the file itself, never through a link,
external storage or a virtual mapping), whose sizes agree with one another and with the bytes
the file stores before anything is allocated for them.
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
from synnav_cli.predict.embed_layout import (
    ARRAYS,
    MAX_DIM,
    check_layout,
    check_offsets,
    check_stored,
    npy_header,
    npy_shapes,
)

# Rows read from a file at a time: bounded memory for any file size.
READ_ROWS = 1024
# What reading a damaged or foreign file raises (h5py and pyarrow included).
UNREADABLE = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    RuntimeError,
    RecursionError,
    OverflowError,
    NotImplementedError,
    zipfile.BadZipFile,
)


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
    except (TypeError, ValueError, RecursionError):
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
                yield from _checked(opened, read())

        opened.chunks = chunks
        yield opened


def _checked(opened: EmbeddingFile, chunks: Iterator[EmbeddingChunk]) -> Iterator[EmbeddingChunk]:
    """``chunks`` as the sizes and types ``opened`` declares, and exactly as many proteins and
    residues; a protein without an identifier (a null in a parquet file) is refused."""
    proteins = residues = 0
    for chunk in chunks:
        size = len(chunk.ids)
        pooled, per_residue = chunk.pooled, opened.residue_total is not None
        if len(chunk.lengths) != size or pooled.shape != (size, opened.dim):
            raise UserError(f"proteins {proteins + 1}-{proteins + size} do not fit its sizes")
        if pooled.dtype != opened.dtype or np.asarray(chunk.lengths).dtype.kind not in "iu":
            raise UserError(f"proteins {proteins + 1}-{proteins + size} are of another type")
        if not all(isinstance(name, str) for name in chunk.ids):
            raise UserError(f"one of proteins {proteins + 1}-{proteins + size} has no id")
        if per_residue != (chunk.residues is not None) or (
            per_residue
            and any(
                r.ndim != 2 or r.shape[1] != opened.dim or r.dtype != opened.dtype
                for r in chunk.residues
            )
        ):
            raise UserError(f"the residues of proteins {proteins + 1}-{proteins + size} do not fit")
        proteins += size
        residues += sum(len(r) for r in chunk.residues or ())
        if proteins > opened.count:
            raise UserError(f"it holds more than the {opened.count} proteins it declares")
        yield chunk
    if proteins != opened.count or (per_residue and residues != opened.residue_total):
        raise UserError(
            f"it holds {proteins} proteins and {residues} residues where it declares "
            f"{opened.count} and {opened.residue_total or 0}"
        )


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """A damaged or foreign file as one line naming it."""
    try:
        yield
    except UserError as error:
        raise UserError(f"{path}: {error}") from None
    except UNREADABLE as error:
        text = str(error).replace("\n", " ")
        text = text if len(text) <= 200 else text[:200] + "..."
        raise UserError(f"{path} is not an embedding file synnav can read ({text})") from None


def _chunk_bounds(count: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, READ_ROWS):
        yield start, min(start + READ_ROWS, count)


def _split(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    base = offsets[0]
    return [flat[a - base : b - base] for a, b in zip(offsets[:-1], offsets[1:])]


class _NpyRows:
    """Rows of one ``.npy`` member of an npz (checked by :func:`npy_shapes`), a few at a time."""

    def __init__(self, archive: zipfile.ZipFile, name: str) -> None:
        self.handle = archive.open(f"{name}.npy")
        self.shape, self.dtype = npy_header(self.handle)

    def read(self, rows: int) -> np.ndarray:
        size = rows * self.shape[1] * self.dtype.itemsize
        data = self.handle.read(size)
        if len(data) != size:
            raise UserError(f"the file ends inside {self.handle.name}")
        return np.frombuffer(data, dtype=self.dtype).reshape(rows, self.shape[1])


@contextmanager
def _open_npz(_module, path: Path) -> Iterator[EmbeddingFile]:
    with zipfile.ZipFile(path) as archive, np.load(path, allow_pickle=False) as small:
        shapes = npy_shapes(archive, (*ARRAYS, "metadata"))
        if shapes.get("metadata", ((0,), None))[0] != ():
            raise UserError("its metadata is not one string")
        count, dim, dtype, total = check_layout(shapes)
        meta = _meta(str(small["metadata"]))
        ids, lengths = small["ids"], small["lengths"]
        offsets = check_offsets(small["offsets"], total) if total is not None else None

        def chunks() -> Iterator[EmbeddingChunk]:
            pooled = _NpyRows(archive, "embeddings")
            residues = _NpyRows(archive, "residue_embeddings") if offsets is not None else None
            for a, b in _chunk_bounds(count):
                rows = None
                if residues is not None:
                    flat = residues.read(int(offsets[b] - offsets[a]))
                    rows = _split(flat, offsets[a : b + 1])
                names = [str(i) for i in ids[a:b]]
                yield EmbeddingChunk(names, lengths[a:b], pooled.read(b - a), rows)

        yield EmbeddingFile(meta, count, dim, dtype, total, chunks)


def _h5_datasets(h5py, f) -> dict:
    """The root's datasets of :data:`ARRAYS`, each refused unless it is stored in the file
    itself, in full: no soft or external link, external storage or virtual dataset."""
    found = {}
    for name in ARRAYS:
        link = f.get(name, getlink=True)
        if link is None:
            continue
        if not isinstance(link, h5py.HardLink):
            raise UserError(f"its {name} is a link; synnav reads only data stored in the file")
        dataset = f[name]
        if not isinstance(dataset, h5py.Dataset) or dataset.shape is None:
            raise UserError(f"its {name} is not an array")
        if dataset.is_virtual or dataset.external:
            raise UserError(f"its {name} keeps its data outside the file")
        declared = int(np.prod(dataset.shape, dtype=object)) * dataset.dtype.itemsize
        check_stored(name, declared, dataset.id.get_storage_size())
        found[name] = dataset
    return found


@contextmanager
def _open_h5(h5py, path: Path) -> Iterator[EmbeddingFile]:
    with h5py.File(path, "r") as f:
        meta = _meta(f.attrs.get("metadata"))
        found = _h5_datasets(h5py, f)
        shapes = {name: (d.shape, d.dtype) for name, d in found.items()}
        if "ids" in found and h5py.check_string_dtype(found["ids"].dtype) is not None:
            shapes["ids"] = (found["ids"].shape, np.dtype(str))
        count, dim, dtype, total = check_layout(shapes)
        offsets = check_offsets(found["offsets"][:], total) if total is not None else None

        def chunks() -> Iterator[EmbeddingChunk]:
            for a, b in _chunk_bounds(count):
                rows = None
                if offsets is not None:
                    flat = found["residue_embeddings"][offsets[a] : offsets[b]]
                    rows = _split(flat, offsets[a : b + 1])
                ids = list(found["ids"].asstr()[a:b])
                pooled = found["embeddings"][a:b]
                yield EmbeddingChunk(ids, found["lengths"][a:b], pooled, rows)

        yield EmbeddingFile(meta, count, dim, dtype, total, chunks)


def _parquet_layout(pa, schema) -> tuple[int, bool]:
    """(dim, per residue) of a table whose columns are those synnav embed writes."""

    def column(name: str):
        if schema.get_field_index(name) < 0:  # missing, or more than one
            raise UserError(f"it has no column {name}")
        return schema.field(name).type

    kind = column("embedding")
    if (
        column("id") != pa.string()
        or not pa.types.is_integer(column("length"))
        or not pa.types.is_fixed_size_list(kind)
        or kind.value_type not in (pa.float16(), pa.float32())
    ):
        raise UserError(
            "its columns are not id (string), length (integer) and embedding (a fixed-size "
            "list of float16 or float32) as synnav embed writes them"
        )
    if not 1 <= kind.list_size <= MAX_DIM:
        raise UserError(f"its embeddings hold {kind.list_size} values each, over {MAX_DIM}")
    if "residue_embeddings" not in schema.names:
        return kind.list_size, False
    rows = column("residue_embeddings")
    if not (
        pa.types.is_list(rows)
        and pa.types.is_fixed_size_list(rows.value_type)
        and rows.value_type.list_size == kind.list_size
        and rows.value_type.value_type == kind.value_type
    ):
        raise UserError("its residue_embeddings are not lists of vectors like its embedding")
    return kind.list_size, True


def _parquet_stored(metadata) -> dict[str, int]:
    """Bytes each top-level column stores, over all row groups."""
    stored: dict[str, int] = {}
    for number in range(metadata.num_row_groups):
        group = metadata.row_group(number)
        for index in range(group.num_columns):
            chunk = group.column(index)
            name = chunk.path_in_schema.split(".")[0]
            stored[name] = stored.get(name, 0) + chunk.total_compressed_size
    return stored


def _values(column, what: str):
    """The values of a list column with no null anywhere, flattened once."""
    if column.null_count:
        raise UserError(f"its {what} holds a null")
    flat = column.flatten()
    if flat.null_count:
        raise UserError(f"its {what} holds a null")
    return flat


@contextmanager
def _open_parquet(pq, path: Path) -> Iterator[EmbeddingFile]:
    import pyarrow as pa

    with pq.ParquetFile(path) as f:
        schema = f.schema_arrow
        meta = _meta((schema.metadata or {}).get(b"synnav"))
        dim, per_residue = _parquet_layout(pa, schema)
        dtype = np.dtype(schema.field("embedding").type.value_type.to_pandas_dtype())
        count, total = f.metadata.num_rows, meta.get("residues") if per_residue else None
        if per_residue and (type(total) is not int or total < 0):
            raise UserError("its metadata does not give the number of residues")
        stored = _parquet_stored(f.metadata)
        check_stored("embedding", count * dim * dtype.itemsize, stored.get("embedding", 0))
        if per_residue:
            size = total * dim * dtype.itemsize
            check_stored("residue_embeddings", size, stored.get("residue_embeddings", 0))

        def chunks() -> Iterator[EmbeddingChunk]:
            for batch in f.iter_batches(batch_size=READ_ROWS):
                pooled = _values(batch.column("embedding"), "embedding")
                rows = None
                if per_residue:
                    column = batch.column("residue_embeddings")
                    flat = _values(_values(column, "residue_embeddings"), "residue_embeddings")
                    sizes = column.value_lengths().to_numpy(zero_copy_only=False)
                    offsets = np.concatenate([[0], np.cumsum(sizes)])
                    rows = _split(flat.to_numpy(zero_copy_only=False).reshape(-1, dim), offsets)
                if batch.column("id").null_count or batch.column("length").null_count:
                    raise UserError("its id or length column holds a null")
                lengths = batch.column("length").to_numpy(zero_copy_only=False)
                ids = batch.column("id").to_pylist()
                vectors = pooled.to_numpy(zero_copy_only=False).reshape(-1, dim)
                yield EmbeddingChunk(ids, lengths, vectors, rows)

        yield EmbeddingFile(meta, count, dim, dtype, total, chunks)


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
