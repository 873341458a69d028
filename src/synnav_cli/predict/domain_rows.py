"""The applicability-domain columns of predict's rows: the assessor a run uses, the pooled
embeddings scoring hands on, and each scored prediction's :class:`~synnav_cli.domain.assess.
DomainCall` (see docs/interpreting.md)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from synnav_cli import console
from synnav_cli.domain.assess import DEFAULT_METHOD, DomainAssessor
from synnav_cli.domain.index import read_index
from synnav_cli.modeldir import ModelInfo
from synnav_cli.plugins import get_backbone
from synnav_cli.predict.writer import Prediction


def open_assessor(info: ModelInfo, method: str | None = None) -> DomainAssessor:
    """The domain assessor of ``info``'s model; says on stderr how identity is found.

    ``method``: auto, mmseqs or kmer; None reads ``SYNNAV_DOMAIN_METHOD``, else
    :data:`~synnav_cli.domain.assess.DEFAULT_METHOD` (k-mers).
    """
    method = method or os.environ.get("SYNNAV_DOMAIN_METHOD") or DEFAULT_METHOD
    index = read_index(info.path)
    backbone = get_backbone(info.meta["backbone"])
    assessor = DomainAssessor(index, method, implausibility=backbone.implausibility)
    if index is None:
        console.info(
            f"Domain: {info.name} has no domain index (trained before synnav kept one): the "
            "domain columns say unknown."
        )
    else:
        embedded = "" if index.embeddings is not None else "; no embeddings stored"
        console.info(
            f"Domain: nearest of {len(index):,} training proteins by {assessor.method}"
            f"{embedded}; `domain` is in, edge or out (docs/interpreting.md)."
        )
    return assessor


def window_means(sums: np.ndarray, groups: Sequence[int]) -> np.ndarray:
    """The pooled embedding of each windowed protein from ``scoring.windows.window_sums``'
    rows (residue-vector sums, then counts), ``groups[k]`` rows for the k-th protein."""
    if not len(groups):
        return np.zeros((0, sums.shape[1] - 1), dtype=np.float32)
    ends = np.cumsum(groups)
    totals = np.add.reduceat(sums, ends - np.asarray(groups), axis=0)
    return totals[:, :-1] / np.maximum(totals[:, -1:], 1.0)


def attach(
    assessor: DomainAssessor,
    sequences: Sequence[str],
    predictions: Sequence[Prediction],
    pooled: list[np.ndarray],
) -> None:
    """Set ``domain`` on every scored prediction (``pooled``: theirs, in order, or empty)."""
    scored = [k for k, p in enumerate(predictions) if p.probabilities is not None]
    if not scored:
        return
    vectors = np.stack(pooled) if pooled else None
    calls = assessor.assess([sequences[k] for k in scored], vectors)
    for k, call in zip(scored, calls):
        predictions[k].domain = call
