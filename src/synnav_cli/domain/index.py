"""``domain.safetensors``: what a model directory keeps about its training proteins.

Tensors: ``residues`` (uint8 codes of every training sequence, concatenated), ``offsets``
(int64, one more than the proteins), ``embeddings`` (float16 [n, dim], a seeded sample of at most
:data:`MAX_EMBEDDINGS` training proteins' pooled embeddings, standardised and each scaled to
length 1), ``center`` and ``scale`` (float32 [dim]: the training mean and standard deviation of
each dimension, which standardise a query's embedding the same way). The
header's metadata holds the ids (JSON), the thresholds set on dev and the format version.

Everything read is checked and bounded: the file's size, the header's, every shape and dtype,
offsets that rise and end at the residue count, codes inside the alphabet, finite embeddings.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synnav_cli.errors import UserError, quoted
from synnav_cli.files import replace_atomically

INDEX_FILE = "domain.safetensors"
FORMAT = "1"
ALPHABET = "ACDEFGHIKLMNPQRSTVWY"  # code 20: anything else (X, B, Z, U, O, ...)
OTHER = len(ALPHABET)
_LETTERS = np.frombuffer((ALPHABET + "X").encode("ascii"), dtype=np.uint8)  # code -> letter
# Bounds: a training set larger than this keeps a seeded sample (ids and sequences together).
MAX_PROTEINS = 200_000
MAX_RESIDUES = 80_000_000
MAX_EMBEDDINGS = 20_000  # 20,000 x 1,152 (ESM C 600M) x 2 bytes = 46 MB at most
MAX_DIM = 8192
MAX_ID_CHARS = 200
MAX_FILE_BYTES = MAX_RESIDUES + MAX_PROTEINS * (8 + 4 * MAX_ID_CHARS) + 100_000_000
MAX_HEADER_BYTES = MAX_PROTEINS * (4 * MAX_ID_CHARS + 8) + 1_000_000
SAMPLE_SEED = 0

_CODES = np.full(256, OTHER, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _CODES[ord(_c)] = _i
    _CODES[ord(_c.lower())] = _i


def encode(sequence: str) -> np.ndarray:
    """``sequence`` as uint8 codes (0-19 the standard residues, 20 anything else)."""
    raw = np.frombuffer(sequence.encode("ascii", "replace"), dtype=np.uint8)
    return _CODES[raw]


@dataclass
class Thresholds:
    """Where ``in`` ends and ``out`` begins (see ``assess.classify`` and docs/interpreting.md)."""

    distance_in: float  # the median dev protein's embedding distance to training
    distance_out: float  # the 95th percentile of the same
    identity_in: float = 0.5  # a training protein this identical, over ...
    coverage_in: float = 0.5  # ... this much of the query, is a close homologue: in
    identity_out: float = 0.3  # below this identity only the embedding can say in or edge
    # Above this score of the model's own (Backbone.implausibility) a protein is out, whatever
    # its embedding distance; None: the backbone has no such score, or the index predates it.
    implausible_out: float | None = None


@dataclass
class Neighbour:
    """A query's nearest training protein (``index`` into the domain index; None: none found),
    the identity of their alignment and the share of the query it covers."""

    index: int | None
    identity: float = 0.0
    coverage: float = 0.0


@dataclass
class DomainIndex:
    ids: list[str]
    residues: np.ndarray  # uint8 codes, concatenated
    offsets: np.ndarray  # int64 [n + 1]
    embeddings: np.ndarray | None  # float32 [m, dim], standardised, unit length; None: not stored
    thresholds: Thresholds | None
    info: dict = field(default_factory=dict)  # how it was built (dev counts, sample sizes)
    center: np.ndarray | None = None  # float32 [dim]
    scale: np.ndarray | None = None  # float32 [dim], positive

    def standardize(self, pooled: np.ndarray) -> np.ndarray:
        """``pooled`` [n, dim] as the stored embeddings are: each dimension centred and scaled
        by training's statistics, so that large-valued features (length, composition) do not
        outweigh the rest in a cosine."""
        return (np.asarray(pooled, dtype=np.float32) - self.center) / self.scale

    def __len__(self) -> int:
        return len(self.ids)

    def sequence_codes(self, i: int) -> np.ndarray:
        return self.residues[self.offsets[i] : self.offsets[i + 1]]

    def sequence(self, i: int) -> str:
        return _LETTERS[self.sequence_codes(i)].tobytes().decode("ascii")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (a zero row stays zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def write_index(
    path: Path,
    ids: list[str],
    sequences: list[str],
    embeddings: np.ndarray | None,
    thresholds: Thresholds | None,
    info: dict | None = None,
) -> Path:
    """Write ``domain.safetensors`` at ``path`` (atomically), sampling down to the bounds."""
    if len(ids) != len(sequences) or not ids:
        raise UserError("a domain index needs one id per training sequence, and at least one")
    rng = np.random.default_rng(SAMPLE_SEED)
    keep = np.arange(len(ids))
    if len(keep) > MAX_PROTEINS:
        keep = np.sort(rng.choice(len(ids), MAX_PROTEINS, replace=False))
    codes = [encode(sequences[i]) for i in keep]
    lengths = np.array([len(c) for c in codes], dtype=np.int64)
    while lengths.sum() > MAX_RESIDUES:  # drop the longest until the residues fit
        drop = int(np.argmax(lengths))
        keep, lengths = np.delete(keep, drop), np.delete(lengths, drop)
        codes.pop(drop)
    tensors = {
        "residues": torch.from_numpy(np.concatenate(codes)),
        "offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)),
    }
    if embeddings is not None:
        rows = np.asarray(embeddings, dtype=np.float32)[keep]
        if len(rows) > MAX_EMBEDDINGS:
            rows = rows[np.sort(rng.choice(len(rows), MAX_EMBEDDINGS, replace=False))]
        center = rows.mean(axis=0)
        scale = np.maximum(rows.std(axis=0), 1e-6)
        standard = unit_rows((rows - center) / scale)
        tensors["embeddings"] = torch.from_numpy(standard.astype(np.float16))
        tensors["center"] = torch.from_numpy(center.astype(np.float32))
        tensors["scale"] = torch.from_numpy(scale.astype(np.float32))
    meta = {
        "format": FORMAT,
        "ids": json.dumps([ids[i][:MAX_ID_CHARS] for i in keep]),
        "info": json.dumps(info or {}),
    }
    if thresholds is not None:
        meta["thresholds"] = json.dumps(
            {k: v for k, v in thresholds.__dict__.items() if v is not None}
        )
    from safetensors.torch import save_file

    # files.save_tensors takes no metadata: the same atomic replacement, with the header's.
    replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def read_index(model_dir: Path) -> DomainIndex | None:
    """The model's domain index; None when it has none (trained before synnav stored one).

    Raises:
        UserError: the file is there but damaged, oversized or not a regular file.
    """
    path = Path(model_dir) / INDEX_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise UserError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{path} is damaged: {size:,} bytes, over the {MAX_FILE_BYTES:,} allowed")
    try:
        with path.open("rb") as handle:
            (header_bytes,) = struct.unpack("<Q", handle.read(8))
        if header_bytes > min(MAX_HEADER_BYTES, size):
            raise ValueError(f"a header of {header_bytes:,} bytes")
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
        return _checked(meta, tensors)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - safetensors, struct and json raise several types
        raise UserError(f"{path} is damaged: {str(error).splitlines()[0][:200]}") from None


def _checked(meta: dict, tensors: dict) -> DomainIndex:
    if meta.get("format") != FORMAT:
        raise ValueError(f"format {quoted(meta.get('format'))}, not {FORMAT}")
    extra = set(tensors) - {"residues", "offsets", "embeddings", "center", "scale"}
    if extra:
        raise ValueError(f"unexpected tensors {sorted(extra)}")
    residues, offsets = tensors.get("residues"), tensors.get("offsets")
    if residues is None or residues.dtype != torch.uint8 or residues.dim() != 1:
        raise ValueError("'residues' must be a uint8 vector")
    if offsets is None or offsets.dtype != torch.int64 or offsets.dim() != 1:
        raise ValueError("'offsets' must be an int64 vector")
    residues, offsets = residues.numpy(), offsets.numpy()
    if len(residues) > MAX_RESIDUES or int(residues.max(initial=0)) > OTHER:
        raise ValueError("'residues' holds too many residues or codes outside the alphabet")
    if (
        not 2 <= len(offsets) <= MAX_PROTEINS + 1
        or offsets[0] != 0
        or offsets[-1] != len(residues)
        or np.any(np.diff(offsets) < 1)
    ):
        raise ValueError("'offsets' must rise from 0 to the residue count")
    ids = json.loads(meta.get("ids", "null"))
    if (
        not isinstance(ids, list)
        or len(ids) != len(offsets) - 1
        or not all(isinstance(i, str) and len(i) <= MAX_ID_CHARS for i in ids)
    ):
        raise ValueError("'ids' must list one id (text) per protein")
    # Ids reach the output table: no control characters (they would forge what a terminal shows).
    ids = [i if i.isprintable() else i.encode("unicode_escape").decode("ascii") for i in ids]
    embeddings = tensors.get("embeddings")
    if embeddings is not None:
        if (
            embeddings.dtype != torch.float16
            or embeddings.dim() != 2
            or not 1 <= embeddings.shape[0] <= MAX_EMBEDDINGS
            or not 1 <= embeddings.shape[1] <= MAX_DIM
            or not bool(torch.isfinite(embeddings).all())
        ):
            raise ValueError("'embeddings' must be finite float16 [proteins, dim], within bounds")
        embeddings = unit_rows(embeddings.float().numpy())
        center, scale = tensors.get("center"), tensors.get("scale")
        for name, vector in (("center", center), ("scale", scale)):
            if (
                vector is None
                or vector.dtype != torch.float32
                or tuple(vector.shape) != (embeddings.shape[1],)
                or not bool(torch.isfinite(vector).all())
            ):
                raise ValueError(f"{name!r} must be a finite float32 vector, one per dimension")
        if not bool((scale > 0).all()):
            raise ValueError("'scale' must be positive")
        center, scale = center.numpy(), scale.numpy()
    else:
        center = scale = None
    thresholds = None
    if "thresholds" in meta:
        values = json.loads(meta["thresholds"])
        five = set(Thresholds.__dataclass_fields__) - {"implausible_out"}
        if not isinstance(values, dict) or set(values) - {"implausible_out"} != five:
            raise ValueError("'thresholds' must hold the five domain thresholds")
        score = values.pop("implausible_out", None)
        if not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 2
            for v in values.values()
        ):
            raise ValueError("the domain thresholds must be numbers between 0 and 2")
        if score is not None and not (
            isinstance(score, (int, float))
            and not isinstance(score, bool)
            and math.isfinite(score)
            and score >= 0
        ):
            raise ValueError("'implausible_out' must be a finite number, 0 or more")
        thresholds = Thresholds(
            **{k: float(v) for k, v in values.items()},
            implausible_out=None if score is None else float(score),
        )
    info = json.loads(meta.get("info", "{}"))
    return DomainIndex(
        ids,
        residues,
        offsets,
        embeddings,
        thresholds,
        info if isinstance(info, dict) else {},
        center,
        scale,
    )
