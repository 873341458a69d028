"""The arrays ``synnav embed`` writes (:mod:`.embed_files`), and the checks a file from elsewhere
(a ``merge`` part, a resume chunk) passes before any of its arrays is loaded: the expected names,
kinds and shapes, sizes that agree with one another, and no more bytes declared than stored.
"""

from __future__ import annotations

import zipfile

import numpy as np

from synnav_cli.errors import UserError

# Values a vector: the largest protein language models have 5,120.
MAX_DIM = 1 << 16
# What a file may declare beyond the bytes it stores: synnav writes vectors uncompressed, and
# embeddings barely compress, whereas a few KB declaring a billion zero-filled proteins would
# otherwise be read and merged for hours.
MAX_RATIO, SLACK = 64, 1 << 20
VECTOR_TYPES = (np.dtype(np.float16), np.dtype(np.float32))
ARRAYS = ("ids", "lengths", "embeddings", "offsets", "residue_embeddings")


def check_stored(name: str, declared: int, stored: int) -> None:
    """Refuse ``name`` when it declares far more bytes than the file stores for it."""
    if declared > MAX_RATIO * stored + SLACK:
        raise UserError(f"its {name} declares {declared} bytes but stores {stored}")


def check_layout(shapes: dict[str, tuple[tuple[int, ...], np.dtype]]) -> tuple:
    """(proteins, dim, dtype, residue rows or None) of arrays as synnav embed lays them out;
    ``shapes`` maps each array present to its shape and dtype (any string type of ``ids`` given
    as ``str``). Anything else is a one-line error."""

    def need(name: str, ndim: int, kinds: str) -> tuple:
        if name not in shapes:
            raise UserError(f"it has no {name}")
        shape, dtype = shapes[name]
        if len(shape) != ndim or dtype.kind not in kinds:
            raise UserError(f"its {name} is not what synnav embed writes ({dtype}, {shape})")
        return shape, dtype

    (count,), _ = need("ids", 1, "U")
    (numbers,), _ = need("lengths", 1, "iu")
    (rows, dim), dtype = need("embeddings", 2, "f")
    if not count == numbers == rows:
        raise UserError(f"its ids, lengths and embeddings hold {count}, {numbers} and {rows} rows")
    if dtype not in VECTOR_TYPES or not 1 <= dim <= MAX_DIM:
        raise UserError(f"its embeddings are {dim} {dtype} values, not up to {MAX_DIM} float16/32")
    if "offsets" not in shapes and "residue_embeddings" not in shapes:
        return count, dim, dtype, None
    (edges,), _ = need("offsets", 1, "iu")
    (total, width), kind = need("residue_embeddings", 2, "f")
    if edges != count + 1 or (width, kind) != (dim, dtype):
        raise UserError("its offsets or residue_embeddings do not fit its embeddings")
    return count, dim, dtype, total


def check_offsets(offsets: np.ndarray, total: int) -> np.ndarray:
    """``offsets`` as int64 if they run from 0 to ``total`` without going back."""
    offsets = np.asarray(offsets).astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != total or (np.diff(offsets) < 0).any():
        raise UserError(f"its offsets do not run from 0 to its {total} residues")
    return offsets


def npy_header(handle) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version not in ((1, 0), (2, 0)):
        raise UserError(f"{handle.name} is a .npy of version {version}")
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(handle)
    if fortran or dtype.hasobject or any(n < 0 for n in shape):
        raise UserError(f"{handle.name} is not an array of numbers or strings")
    return shape, dtype


def npy_shapes(archive: zipfile.ZipFile, names=ARRAYS) -> dict[str, tuple[tuple, np.dtype]]:
    """Shape and dtype of each member of ``names`` present, read from its header; a member
    whose stored bytes are not what its header declares is refused before it is loaded."""
    found = {}
    for name in names:
        try:
            info = archive.getinfo(f"{name}.npy")
        except KeyError:
            continue
        with archive.open(info) as handle:
            shape, dtype = npy_header(handle)
            start = handle.tell()
        declared = start + int(np.prod(shape, dtype=object)) * dtype.itemsize
        if info.file_size != declared:
            raise UserError(
                f"its {name} holds {info.file_size} bytes where its header says {declared}"
            )
        check_stored(name, declared, info.compress_size)
        found[name] = (shape, np.dtype(str) if dtype.kind == "U" else dtype)
    return found
