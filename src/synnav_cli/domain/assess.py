"""The domain columns of a prediction: nearest training protein, identity, coverage, embedding
distance, and the ``in`` / ``edge`` / ``out`` call (:func:`classify`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from synnav_cli.data.homology import mmseqs_available
from synnav_cli.domain.index import DomainIndex, Neighbour, Thresholds, unit_rows
from synnav_cli.domain.kmer import KmerSearch
from synnav_cli.errors import UserError

METHODS = ("auto", "mmseqs", "kmer")
# k-mers unless asked: the same columns on every machine, with MMseqs2 installed or not, and no
# fixed cost (an MMseqs2 search builds its index of the training proteins every time: about 5 s
# for the bundled model's 3,910 on one CPU thread, even for one query; docs/interpreting.md).
DEFAULT_METHOD = "kmer"
DOMAINS = ("in", "edge", "out", "unknown")
# The columns predict adds, after every other (predict/writer.py); docs/data-format.md.
DOMAIN_COLUMNS = ["nearest_training", "identity", "coverage", "embedding_distance", "domain"]
_BLOCK = 1024  # queries a matrix product at a time: [1024, training] floats stay small


@dataclass
class DomainCall:
    nearest: str | None  # the nearest training protein's id; None: none found (or unknown)
    identity: float | None  # None: the model has no domain index
    coverage: float | None
    distance: float | None  # None: no embeddings stored, or none given
    domain: str  # in | edge | out | unknown


UNKNOWN = DomainCall(None, None, None, None, "unknown")


def classify(
    neighbour: Neighbour,
    distance: float | None,
    t: Thresholds | None,
    implausibility: float | None = None,
) -> str:
    """``in``: a training protein at ``identity_in`` or more over ``coverage_in`` of the query,
    or an embedding no farther from training than the median dev protein's; ``out``: the
    model's own implausibility score above ``implausible_out`` (a sequence unlike any real
    protein), or no training protein at ``identity_out`` over ``coverage_in`` and an embedding
    farther than 95% of dev proteins'; ``edge``: between. ``unknown`` without thresholds or a
    distance, unless a close homologue alone says ``in``."""
    if t is None:
        return "unknown"
    covered = neighbour.index is not None and neighbour.coverage >= t.coverage_in
    if covered and neighbour.identity >= t.identity_in:
        return "in"
    if (
        implausibility is not None
        and t.implausible_out is not None
        and implausibility > t.implausible_out
    ):
        # A composition-driven embedding puts shuffled sequences next to real proteins; the
        # model's decoy score does not (docs/interpreting.md).
        return "out"
    if distance is None:
        return "unknown"
    if distance <= t.distance_in:
        return "in"
    if distance > t.distance_out and not (covered and neighbour.identity >= t.identity_out):
        return "out"
    return "edge"


def nearest_distances(index_embeddings: np.ndarray, pooled: np.ndarray) -> np.ndarray:
    """Cosine distance (1 - cosine similarity) of each row of ``pooled`` (standardised:
    ``DomainIndex.standardize``) to its nearest stored training embedding."""
    queries = unit_rows(pooled)
    out = np.empty(len(queries), dtype=np.float32)
    for start in range(0, len(queries), _BLOCK):
        similarity = queries[start : start + _BLOCK] @ index_embeddings.T
        out[start : start + _BLOCK] = 1.0 - similarity.max(axis=1)
    return np.clip(out, 0.0, 2.0)


class DomainAssessor:
    """Domain calls for batches of scored proteins, against one model's index.

    ``method``: ``kmer`` (:data:`DEFAULT_METHOD`), ``mmseqs``, or ``auto`` (MMseqs2 when
    ``mmseqs`` is on PATH, else k-mers). ``index`` None (a model trained before indexes were stored): every call unknown.
    """

    def __init__(
        self,
        index: DomainIndex | None,
        method: str = DEFAULT_METHOD,
        threads: int = 1,
        implausibility: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ):
        # ``implausibility``: the model's backbone's score of raw pooled embeddings
        # (``Backbone.implausibility``), read against the index's ``implausible_out``.
        self.implausibility = implausibility
        if method not in METHODS:
            raise UserError(f"unknown domain method {method!r}; choose {', '.join(METHODS)}")
        self.index = index
        self.method = "none"
        self._search = None
        if index is not None:
            if method == "mmseqs" or (method == "auto" and mmseqs_available()):
                from synnav_cli.domain.mmseqs import MmseqsSearch

                self._search, self.method = MmseqsSearch(index, threads), "mmseqs2"
            else:
                self._search, self.method = KmerSearch(index), "k-mer"

    @property
    def wants_embeddings(self) -> bool:
        return self.index is not None and self.index.embeddings is not None

    def close(self) -> None:
        if hasattr(self._search, "close"):
            self._search.close()

    def assess(self, sequences: Sequence[str], pooled: np.ndarray | None) -> list[DomainCall]:
        """One call per sequence; ``pooled`` [len(sequences), dim] or None."""
        if self.index is None:
            return [UNKNOWN] * len(sequences)
        neighbours = self._search.nearest(sequences)
        distances: list[float | None] = [None] * len(sequences)
        if pooled is not None and self.wants_embeddings:
            if pooled.shape[1] != self.index.embeddings.shape[1]:
                raise UserError(
                    f"the model's domain index holds {self.index.embeddings.shape[1]}-wide "
                    f"embeddings, but the model gives {pooled.shape[1]}: the index is not this "
                    "model's; rebuild it (docs/interpreting.md)"
                )
            standard = self.index.standardize(pooled)
            distances = [float(d) for d in nearest_distances(self.index.embeddings, standard)]
        scores: list[float | None] = [None] * len(sequences)
        if pooled is not None and self.implausibility is not None:
            found = self.implausibility(pooled)
            if found is not None:
                scores = [float(v) for v in found]
        return [
            DomainCall(
                None if n.index is None else self.index.ids[n.index],
                round(n.identity, 4),
                round(n.coverage, 4),
                None if d is None else round(d, 4),
                classify(n, d, self.index.thresholds, score),
            )
            for n, d, score in zip(neighbours, distances, scores)
        ]


def dev_thresholds(
    dev_distances: np.ndarray, dev_implausibility: np.ndarray | None = None
) -> Thresholds:
    """Distance thresholds from the dev proteins' distances to training: the median (``in`` at
    or below) and the 95th percentile (``out`` above, without a homologue). With the dev
    proteins' implausibility scores, ``implausible_out`` is twice the largest of them, and at
    least 1: no real dev protein comes near it, while the bundled model scores shuffled
    proteins about 20 against at most 1.6 for its test proteins (docs/interpreting.md)."""
    dev_distances = np.asarray(dev_distances, dtype=np.float64)
    if len(dev_distances) == 0:
        raise UserError("no dev proteins to set the domain thresholds on")
    implausible_out = None
    if dev_implausibility is not None and len(dev_implausibility):
        implausible_out = round(max(1.0, 2.0 * float(np.max(dev_implausibility))), 6)
    return Thresholds(
        distance_in=round(float(np.quantile(dev_distances, 0.5)), 6),
        distance_out=round(float(np.quantile(dev_distances, 0.95)), 6),
        implausible_out=implausible_out,
    )
