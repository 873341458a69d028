"""Length-sorted batches bounded by a token budget rather than a protein count.

A budget keeps memory flat across batches: 64 short peptides or 2 titin fragments cost about
the same. Sorting by length keeps padding, and so wasted work, small.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# How many batches' worth of proteins are sorted together when training. Sorting the whole
# epoch would give every epoch the same batches; sorting small pools keeps batches varied while
# padding stays low.
TRAINING_POOL_BATCHES = 50


def padded_cost(lengths: Sequence[int]) -> int:
    return len(lengths) * max(lengths, default=0)


def _greedy(
    order: Sequence[int], lengths: Sequence[int], max_tokens: int, max_batch_size: int | None
) -> list[list[int]]:
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        candidate = max(longest, lengths[i])
        too_many = max_batch_size is not None and len(current) >= max_batch_size
        if current and (candidate * (len(current) + 1) > max_tokens or too_many):
            batches.append(current)
            current, candidate = [], lengths[i]
        current.append(i)
        longest = candidate
    if current:
        batches.append(current)
    return batches


def inference_batches(
    lengths: Sequence[int], max_tokens: int, max_batch_size: int | None = None
) -> list[list[int]]:
    """Indices grouped into batches, longest first (an out-of-memory shows up at once)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return _greedy(order, lengths, max_tokens, max_batch_size)


def training_batches(
    lengths: Sequence[int],
    max_tokens: int,
    max_batch_size: int | None,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Shuffled batches of similar lengths; a different arrangement for each ``rng`` state."""
    order = rng.permutation(len(lengths)).tolist()
    pool = (max_batch_size or 64) * TRAINING_POOL_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: -lengths[i])
        batches.extend(_greedy(chunk, lengths, max_tokens, max_batch_size))
    rng.shuffle(batches)
    return batches
