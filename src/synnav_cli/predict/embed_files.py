"""Embedding files by suffix: ``.npz``, ``.h5``/``.hdf5`` (h5py) and ``.parquet`` (pyarrow).

Every format holds the same things (docs/embeddings.md shows how to read each):

- ``.npz`` and ``.h5``: ``ids`` (strings), ``lengths`` (residues per protein before any cut to
  the model's maximum), ``embeddings`` ``[proteins, dim]`` and, per residue, ``offsets``
  ``[proteins + 1]`` with ``residue_embeddings`` ``[all residues, dim]``: protein ``i`` is
  ``residue_embeddings[offsets[i]:offsets[i + 1]]``. ``metadata`` (a JSON string: an npz member,
  an HDF5 root attribute) says which model made them, the input's sha256 and the shard.
- ``.parquet``: one row per protein: ``id``, ``length``, ``embedding`` (a fixed-size list of dim
  values) and per residue ``residue_embeddings`` (a list of fixed-size lists); the JSON is the
  schema metadata ``synnav``.

Files are written from a stream of chunks (and read back as one, :mod:`.embed_read`), so
neither a long run's final file nor a merge of shards holds all residue vectors in memory.
"""

from __future__ import annotations

import importlib
import json
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synnav_cli.errors import UserError
from synnav_cli.resources import install_hint

FORMATS = {".npz": "npz", ".h5": "hdf5", ".hdf5": "hdf5", ".parquet": "parquet"}
# Format -> (module it needs, the extra that installs it).
_NEEDS = {"hdf5": ("h5py", "hdf5"), "parquet": ("pyarrow.parquet", "parquet")}


@dataclass
class EmbeddingChunk:
    """Consecutive proteins: identifiers, lengths, pooled vectors and (maybe) residue vectors."""

    ids: list[str]
    lengths: np.ndarray  # int64 [n]
    pooled: np.ndarray  # [n, dim]
    residues: list[np.ndarray] | None  # per protein [residues, dim]


@dataclass
class EmbeddingSource:
    """What a writer needs: the sizes up front, then ``chunks()`` in order (callable repeatedly)."""

    count: int
    dim: int
    dtype: np.dtype
    residue_total: int | None  # None: pooled vectors only
    meta: dict
    chunks: Callable[[], Iterator[EmbeddingChunk]]


def format_of(path: Path) -> str:
    """The format ``path``'s suffix names; an unknown suffix is a one-line error."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(
            f"{path}: unknown embedding format {suffix or '(no suffix)'!r}; "
            f"name the file .npz, .h5 (or .hdf5) or .parquet"
        )
    return FORMATS[suffix]


def require(fmt: str):
    """The module ``fmt`` needs, or a one-line error naming the extra that installs it."""
    if fmt not in _NEEDS:
        return None
    module, extra = _NEEDS[fmt]
    try:
        return importlib.import_module(module)
    except ImportError:
        name = module.split(".")[0]
        raise UserError(
            f"{fmt} embedding files need {name}: {install_hint(extra)}"
        ) from None


def write_embeddings(path: Path, source: EmbeddingSource, fmt: str) -> None:
    """Write ``source`` to ``path`` in ``fmt`` (a value of :data:`FORMATS`; ``path`` is the
    temporary file ``files.atomic_path`` renames into place, so its suffix says nothing)."""
    module = require(fmt)
    meta = {**source.meta, "proteins": source.count, "residues": source.residue_total}
    if fmt == "npz":
        _write_npz(path, source, meta)
    elif fmt == "hdf5":
        _write_h5(module, path, source, meta)
    else:
        _write_parquet(path, source, meta)


def _flat_residues(chunk: EmbeddingChunk, dim: int, dtype) -> np.ndarray:
    if not chunk.residues:
        return np.zeros((0, dim), dtype=dtype)
    return np.concatenate(chunk.residues).astype(dtype, copy=False)


def _offsets(source: EmbeddingSource) -> np.ndarray:
    sizes = [len(r) for chunk in source.chunks() for r in (chunk.residues or ())]
    return np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)


# --- npz: a zip of .npy members, as numpy.savez writes it, but each member streamed ---


def _npy_member(archive: zipfile.ZipFile, name: str, dtype, shape: tuple, pieces) -> None:
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    rows = 0
    with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
        np.lib.format.write_array_header_2_0(handle, header)
        for piece in pieces:
            piece = np.ascontiguousarray(piece, dtype=dtype)
            rows += len(piece) if piece.ndim else 1
            handle.write(piece.tobytes())
    if rows != (shape[0] if shape else 1):
        raise UserError(f"{name}: {rows} rows written where {shape[0]} were expected")


def _write_npz(path: Path, source: EmbeddingSource, meta: dict) -> None:
    # A member is written whole before the next begins: one pass for the small arrays, then one
    # for each matrix.
    names, lengths, sizes = [], [], []
    for chunk in source.chunks():
        names += chunk.ids
        lengths.append(np.asarray(chunk.lengths, dtype=np.int64))
        sizes += [len(r) for r in chunk.residues or ()]
    ids = np.array(names, dtype=str)
    if ids.dtype.itemsize == 0:  # no proteins (an empty shard): numpy would say <U0
        ids = ids.astype("<U1")
    lengths = np.concatenate(lengths or [np.zeros(0, np.int64)])
    shape, dim, dtype = (source.count, source.dim), source.dim, source.dtype
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        text = np.array(json.dumps(meta))
        _npy_member(archive, "metadata", text.dtype, (), [text])
        _npy_member(archive, "ids", ids.dtype, ids.shape, [ids])
        _npy_member(archive, "lengths", np.int64, lengths.shape, [lengths])
        _npy_member(archive, "embeddings", dtype, shape, (c.pooled for c in source.chunks()))
        if source.residue_total is not None:
            offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
            _npy_member(archive, "offsets", np.int64, offsets.shape, [offsets])
            _npy_member(
                archive,
                "residue_embeddings",
                dtype,
                (source.residue_total, dim),
                (_flat_residues(c, dim, dtype) for c in source.chunks()),
            )


# --- HDF5: the npz layout, one dataset per array ---


def _write_h5(h5py, path: Path, source: EmbeddingSource, meta: dict) -> None:
    dim, dtype = source.dim, source.dtype
    with h5py.File(path, "w") as f:
        f.attrs["metadata"] = json.dumps(meta)
        ids = f.create_dataset("ids", (source.count,), dtype=h5py.string_dtype())
        lengths = f.create_dataset("lengths", (source.count,), dtype=np.int64)
        pooled = f.create_dataset("embeddings", (source.count, dim), dtype=dtype)
        if source.residue_total is not None:
            f.create_dataset("offsets", data=_offsets(source))
            residues = f.create_dataset(
                "residue_embeddings", (source.residue_total, dim), dtype=dtype
            )
        at = residue_at = 0
        for chunk in source.chunks():
            end = at + len(chunk.ids)
            ids[at:end], lengths[at:end], pooled[at:end] = chunk.ids, chunk.lengths, chunk.pooled
            if source.residue_total is not None:
                flat = _flat_residues(chunk, dim, dtype)
                residues[residue_at : residue_at + len(flat)] = flat
                residue_at += len(flat)
            at = end


# --- Parquet: one row per protein ---


def _parquet_table(pa, chunk: EmbeddingChunk, schema, dim: int, dtype):
    columns = [
        pa.array(chunk.ids, pa.string()),
        pa.array(np.asarray(chunk.lengths, dtype=np.int64)),
        pa.FixedSizeListArray.from_arrays(pa.array(chunk.pooled.astype(dtype).reshape(-1)), dim),
    ]
    if chunk.residues is not None:
        flat = _flat_residues(chunk, dim, dtype)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), dim)
        sizes = np.concatenate([[0], np.cumsum([len(r) for r in chunk.residues])])
        columns.append(pa.ListArray.from_arrays(pa.array(sizes.astype(np.int32)), inner))
    return pa.Table.from_arrays(columns, schema=schema)


def _write_parquet(path: Path, source: EmbeddingSource, meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    value = pa.from_numpy_dtype(source.dtype)
    fields = [
        pa.field("id", pa.string()),
        pa.field("length", pa.int64()),
        pa.field("embedding", pa.list_(value, source.dim)),
    ]
    if source.residue_total is not None:
        fields.append(pa.field("residue_embeddings", pa.list_(pa.list_(value, source.dim))))
    schema = pa.schema(fields, metadata={"synnav": json.dumps(meta)})
    with pq.ParquetWriter(path, schema) as writer:
        for chunk in source.chunks():  # one row group a chunk
            writer.write_table(_parquet_table(pa, chunk, schema, source.dim, source.dtype))
