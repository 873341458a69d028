"""Nearest training protein by exact shared 5-mers, with no external program.

The method, step by step (docs/interpreting.md says the same for users):

1. Every window of :data:`K` = 5 standard residues is a k-mer (20^5 = 3.2 million possible);
   a window holding X, B, Z, U or O is no k-mer.
2. Candidates: the training proteins that share the most distinct k-mers with the query (a
   sparse query x training matrix product), at most :data:`CANDIDATES`, each sharing at least
   :data:`MIN_SHARED` and 1% of the query's distinct k-mers. At 5 residues a chance match
   between two unrelated 500-residue proteins happens about once in twelve pairs; a homologue
   at 50% identity over 500 residues shares about 15 k-mers or more.
3. Alignment of query and candidate from the k-mer hits: hits are grouped by diagonal
   (query position minus training position); each diagonal with at least two hits spans a
   segment from its first hit to the end of its last, if at least two of its hits do not
   overlap (a shared 6-mer is two overlapping hits, and chance). Segments are taken best first (most
   hits) when they overlap no segment already taken, in query or candidate, and keep the
   order of both sequences, so the result is one ungapped-segment alignment, like a local
   alignment whose gaps fall between segments.
4. **identity** = identical residues / aligned residues over the segments, counted exactly
   residue by residue (not estimated from k-mer counts); **coverage** = aligned query residues /
   query length. The candidate with the most identical residues is the nearest.

It finds close homologues (above about 50% identity, where conserved 5-mers are common) as
MMseqs2 does; below about 40% identity shared 5-mers are rare and it reports no neighbour,
where MMseqs2 may still find a weak alignment. Both read as "no close homologue" to the domain
call (``assess.classify``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from synnav_cli.domain.index import OTHER, DomainIndex, Neighbour, encode

if TYPE_CHECKING:
    from scipy import sparse

K = 5
SPACE = 20**K
CANDIDATES = 2
MIN_SHARED = 3
MIN_SHARED_SHARE = 0.01
# A k-mer more often than this in one protein is a repeat (poly-Q, collagen): its hits are
# every pair of copies, which says nothing about homology and costs quadratic time.
MAX_REPEATS = 20
MAX_DIAGONALS = 64  # segments tried per candidate, best first


def kmers(codes: np.ndarray) -> np.ndarray:
    """The k-mer at each position of ``codes`` (``index.encode``); -1 where none."""
    if len(codes) < K:
        return np.empty(0, dtype=np.int64)
    # Horner's rule over K shifted views: K passes over flat arrays, several times faster than a
    # product over a [windows, K] view (0.2 s for the bundled model's 2.5 million windows).
    count = len(codes) - K + 1
    values = np.zeros(count, dtype=np.int64)
    other = np.zeros(count, dtype=bool)
    for offset in range(K):
        residue = codes[offset : offset + count]
        values *= 20
        values += residue
        other |= residue == OTHER
    values[other] = -1
    return values


def _presence(rows: Sequence[np.ndarray], *, by_kmer: bool = False) -> sparse.csr_matrix:
    """A 0/1 matrix [len(rows), 20^K] of the distinct k-mers each row holds; with ``by_kmer``
    the same matrix transposed, [20^K, len(rows)], built in that layout (the training side, so
    that each query block's product needs no conversion). One sort for all rows: a key is
    major index * minor size + minor index; row starts come from counts per major index (a
    searchsorted over all 20^K k-mers took 0.18 s for the bundled model)."""
    # Imported here: scipy costs every predict and embed run a few tenths of a second to import
    # (writer -> domain.assess imports this module), and only the k-mer search needs it.
    from scipy import sparse

    flat = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    row_of = np.repeat(np.arange(len(rows), dtype=np.int64), [len(r) for r in rows])
    valid = flat >= 0
    if by_kmer:
        major, minor, shape = flat[valid], row_of[valid], (SPACE, len(rows))
    else:
        major, minor, shape = row_of[valid], flat[valid], (len(rows), SPACE)
    width = max(shape[1], 1)
    # Sorted, then adjacent duplicates dropped: np.unique took 2.9 s on the bundled model's 2.5
    # million keys (numpy 2.4), this 0.05 s.
    keys = np.sort(major * width + minor)
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys
    indptr = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // width, minlength=shape[0]), out=indptr[1:])
    data = np.ones(len(keys), dtype=np.int32)
    return sparse.csr_matrix((data, keys % width, indptr), shape=shape)


def _training_kmers(index: DomainIndex) -> list[np.ndarray]:
    """:func:`kmers` of every training protein, computed in one pass over the index's joined
    residues: protein i's windows are those that start and end inside it, so none crosses into
    the next (0.4 s a protein at a time for the bundled model's 3,910, a few hundredths so)."""
    every = kmers(index.residues)
    return [every[a : max(a, b - K + 1)] for a, b in itertools.pairwise(index.offsets)]


def _query_kmers(sequences: Sequence[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Codes and k-mers of each query, computed over all queries at once: joined by ``*`` (code
    20), a window across two queries holds a non-standard residue and is no k-mer."""
    codes = encode("*".join(sequences))
    every = kmers(codes)
    starts = np.concatenate([[0], np.cumsum([len(s) + 1 for s in sequences])[:-1]])
    pieces = [codes[a : a + len(s)] for a, s in zip(starts, sequences)]
    windows = [every[a : a + max(0, len(s) - K + 1)] for a, s in zip(starts, sequences)]
    return pieces, windows


class KmerSearch:
    """Nearest training protein of each query, by :func:`align` on the best k-mer candidates."""

    def __init__(self, index: DomainIndex):
        self.index = index
        self._kmers = _training_kmers(index)
        # Each training protein's k-mer order, sorted when it first becomes a candidate: a run
        # aligns against a few of the thousands, and sorting them all took 0.25 s of its start.
        self._order: dict[int, np.ndarray] = {}
        self._training = _presence(self._kmers, by_kmer=True)

    def nearest(self, sequences: Sequence[str]) -> list[Neighbour]:
        if not sequences:
            return []
        codes, query_kmers = _query_kmers(sequences)
        presence = _presence(query_kmers)
        distinct = np.diff(presence.indptr)
        shared = (presence @ self._training).tocsr()
        found = []
        for row, (query, query_k) in enumerate(zip(codes, query_kmers)):
            start, end = shared.indptr[row], shared.indptr[row + 1]
            counts, columns = shared.data[start:end], shared.indices[start:end]
            keep = counts >= max(MIN_SHARED, MIN_SHARED_SHARE * distinct[row])
            counts, columns = counts[keep], columns[keep]
            best = Neighbour(None)
            best_identical = 0
            for column in columns[np.argsort(-counts, kind="stable")[:CANDIDATES]]:
                column = int(column)
                order = self._order.get(column)
                if order is None:
                    order = self._order[column] = np.argsort(self._kmers[column], kind="stable")
                target = self.index.sequence_codes(column)
                identical, aligned, covered = align(
                    query, query_k, target, self._kmers[column], order
                )
                if identical > best_identical:
                    best_identical = identical
                    best = Neighbour(int(column), identical / aligned, covered / len(query))
            found.append(best)
        return found


def align(
    query: np.ndarray,
    query_k: np.ndarray,
    target: np.ndarray,
    target_k: np.ndarray,
    order: np.ndarray | None = None,
) -> tuple[int, int, int]:
    """(identical residues, aligned residues, aligned query residues) of the segment alignment
    that the shared k-mers of ``query`` and ``target`` define (step 3 of the module's method).
    ``order``: ``target_k``'s stable argsort, when the caller keeps it."""
    if order is None:
        order = np.argsort(target_k, kind="stable")
    ranked = target_k[order]
    valid = query_k >= 0
    low = np.searchsorted(ranked, query_k, "left")
    high = np.searchsorted(ranked, query_k, "right")
    counts = np.where(valid & (high - low <= MAX_REPEATS), high - low, 0)
    total = int(counts.sum())
    if total == 0:
        return 0, 0, 0
    i = np.repeat(np.arange(len(query_k)), counts)
    within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    j = order[np.repeat(low, counts) + within]
    diagonals, inverse, hits = np.unique(i - j, return_inverse=True, return_counts=True)
    first = np.full(len(diagonals), len(query), dtype=np.int64)
    last = np.zeros(len(diagonals), dtype=np.int64)
    np.minimum.at(first, inverse, i)
    np.maximum.at(last, inverse, i)
    taken: list[tuple[int, int, int]] = []  # (query start, query end, diagonal)
    identical = aligned = 0
    for d in np.argsort(-hits, kind="stable")[:MAX_DIAGONALS]:
        if hits[d] < MIN_SHARED:
            break
        a, b, diagonal = int(first[d]), int(last[d]) + K, int(diagonals[d])
        if b - a < 2 * K:  # its hits all overlap: one stretch of 5 to 9 identical residues
            continue
        if not all(_ordered((a, b, diagonal), other) for other in taken):
            continue
        taken.append((a, b, diagonal))
        q, t = query[a:b], target[a - diagonal : b - diagonal]
        identical += int(((q == t) & (q != OTHER)).sum())
        aligned += b - a
    return identical, aligned, aligned


def _ordered(one: tuple[int, int, int], other: tuple[int, int, int]) -> bool:
    """Whether two segments overlap in neither sequence and keep both sequences' order."""
    (a1, b1, d1), (a2, b2, d2) = one, other
    if b1 <= a2:
        return b1 - d1 <= a2 - d2
    if b2 <= a1:
        return b2 - d2 <= a1 - d1
    return False
