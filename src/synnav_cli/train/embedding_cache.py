"""An on-disk cache of pooled protein embeddings, for training a head on a frozen backbone.

With the encoder frozen, a protein's pooled embedding never changes, so it is computed once and
every later epoch (and every later run on the same proteins) reads it back instead of running the
backbone again.

Storage is one SQLite database (``embeddings.sqlite`` under the cache root), one row per
(key, sequence) holding the float32 vector as a blob. SQLite is in the standard library, each
``put_many`` is one transaction (a crash mid-write leaves the previous state, never a torn
file), several processes may share the file, and thousands of rows cost one file rather than
thousands of small ones. float32 rather than float16: the head then sees exactly the values a
direct forward would give, and 20,000 proteins at width 1152 are still under 100 MB.

The key is ``Backbone.fingerprint()`` (backbone id + weights identity) plus the precision the
embedding was computed in (a bf16 forward gives measurably different vectors than fp32), and the
sequence is stored by its sha256.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from synnav_cli import console, paths
from synnav_cli.backbones.base import Backbone
from synnav_cli.model import LocalizationModel
from synnav_cli.scoring.score import Runtime, run_batches

DB_FILE = "embeddings.sqlite"
# Bound parameters per SELECT; well under SQLite's limit on every build still in use.
_QUERY_CHUNK = 500
_SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    key TEXT NOT NULL,
    sequence_sha256 BLOB NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (key, sequence_sha256)
) WITHOUT ROWID
"""


def default_root() -> Path:
    return paths.cache_dir() / "embeddings"


def sequence_digest(sequence: str) -> bytes:
    return hashlib.sha256(sequence.encode("ascii")).digest()


def cache_key(backbone: Backbone, precision: str) -> str:
    """What identifies the function that produced an embedding: weights and numeric precision."""
    return f"{backbone.fingerprint()}|{precision}"


class EmbeddingCache:
    """Pooled embeddings by (key, sequence). Safe to share between processes."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.path = self.root / DB_FILE
        self._conn: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self.root.mkdir(parents=True, exist_ok=True)
            try:
                self._conn = self._open()
            except sqlite3.DatabaseError as error:
                # A file that is not a database (damaged by something other than SQLite) holds
                # nothing that cannot be recomputed; set it aside rather than fail every run.
                aside = self.path.with_name(f"{self.path.name}.damaged-{int(time.time())}")
                os.replace(self.path, aside)
                console.warn(
                    f"embedding cache {self.path} was unreadable ({error}); moved to {aside.name}"
                )
                self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        # Long timeout: another process may be in the middle of a write transaction.
        conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            # WAL lets readers proceed while a writer commits; NORMAL sync keeps the database
            # consistent after a crash (a power loss may drop the last commits, which are only
            # recomputable embeddings).
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_many(
        self, key: str, sequences: Sequence[str]
    ) -> tuple[dict[int, np.ndarray], list[int]]:
        """``(found, missing)``: vectors by position in ``sequences``, and positions not cached."""
        digests = [sequence_digest(s) for s in sequences]
        unique = list(dict.fromkeys(digests))
        stored: dict[bytes, np.ndarray] = {}
        conn = self._connect()
        for start in range(0, len(unique), _QUERY_CHUNK):
            chunk = unique[start : start + _QUERY_CHUNK]
            rows = conn.execute(
                "SELECT sequence_sha256, dim, vector FROM embeddings WHERE key = ? "
                f"AND sequence_sha256 IN ({','.join('?' * len(chunk))})",
                (key, *chunk),
            )
            for digest, dim, blob in rows:
                vector = np.frombuffer(blob, dtype="<f4")
                if vector.size == dim:  # anything else is a damaged row: recompute it
                    stored[digest] = vector
        found: dict[int, np.ndarray] = {}
        missing: list[int] = []
        for i, digest in enumerate(digests):
            if digest in stored:
                found[i] = stored[digest]
            else:
                missing.append(i)
        return found, missing

    def put_many(self, key: str, sequences: Sequence[str], embeddings: np.ndarray) -> None:
        """Store ``embeddings[i]`` for ``sequences[i]``, all or none (one transaction)."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or len(embeddings) != len(sequences):
            raise ValueError(
                f"need one embedding row per sequence, got {embeddings.shape} for {len(sequences)}"
            )
        vectors = np.ascontiguousarray(embeddings, dtype="<f4")
        dim = vectors.shape[1]
        rows = (
            (key, sequence_digest(s), dim, vectors[i].tobytes()) for i, s in enumerate(sequences)
        )
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def count(self, key: str | None = None) -> int:
        conn = self._connect()
        if key is None:
            return conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return conn.execute("SELECT COUNT(*) FROM embeddings WHERE key = ?", (key,)).fetchone()[0]


def pooled_embeddings(
    model: LocalizationModel | Callable[[], LocalizationModel],
    backbone: Backbone,
    sequences: Sequence[str],
    runtime: Runtime,
    cache: EmbeddingCache | None = None,
    progress: console.Progress | None = None,
) -> np.ndarray:
    """Pooled embeddings ``[len(sequences), dim]`` (float32) in the order given.

    Only proteins missing from ``cache`` go through the encoder, in length-sorted token-budget
    batches (``runtime``: an :class:`synnav_cli.scoring.score.Runtime`); each batch is stored as it
    finishes, so an interrupted run keeps what it computed. ``model`` may be a function that
    builds the model: it is then called only when something is missing, so a fully cached run
    never loads the backbone's weights. Identical sequences are embedded once.
    """
    key = cache_key(backbone, runtime.precision)
    if cache is not None:
        found, missing = cache.get_many(key, sequences)
    else:
        found, missing = {}, list(range(len(sequences)))
    if progress is not None and found:
        progress.advance(len(found))

    result: np.ndarray | None = None
    if found:
        first = next(iter(found.values()))
        result = np.empty((len(sequences), first.size), dtype=np.float32)
        for i, vector in found.items():
            result[i] = vector
    if not missing:
        return result if result is not None else np.zeros((0, backbone.embedding_dim), np.float32)

    positions: dict[str, list[int]] = {}
    for i in missing:
        positions.setdefault(sequences[i], []).append(i)
    todo = list(positions)
    if not isinstance(model, torch.nn.Module):
        model = model()
    was_training = model.training
    model.eval()
    lengths = [backbone.tokens(len(s)) for s in todo]

    @torch.inference_mode()
    def embed(index: list[int]) -> np.ndarray:
        batch = backbone.tokenize([todo[i] for i in index]).to(runtime.device)
        return runtime.run(lambda: model.embed(batch).float()).cpu().numpy()

    try:
        for index, vectors in run_batches(lengths, runtime, embed):
            batch_sequences = [todo[i] for i in index]
            if result is None:
                result = np.empty((len(sequences), vectors.shape[1]), dtype=np.float32)
            if cache is not None:
                cache.put_many(key, batch_sequences, vectors)
            done = 0
            for sequence, vector in zip(batch_sequences, vectors):
                for i in positions[sequence]:
                    result[i] = vector
                    done += 1
            if progress is not None:
                progress.advance(done)
    finally:
        model.train(was_training)
    return result
