"""Scoring proteins with a model: length-sorted token-budget batches, results in input order.

An out-of-memory error never ends a run while a batch can still be split: the budget is halved
(below the failed batch's own padded size, so the retry is smaller), the same proteins are
re-batched under it, and the smaller budget holds for the rest of the run. A batch whose
half-precision output is not finite (fp16 overflows past 65,504) runs again in fp32.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from synnav_cli import console
from synnav_cli.backbones.base import Backbone
from synnav_cli.console import ChunkProgress, Progress
from synnav_cli.errors import UserError
from synnav_cli.model import LocalizationModel
from synnav_cli.runtime import hardware
from synnav_cli.scoring import batches as batching

T = TypeVar("T")


@dataclass
class Runtime:
    """Where and how batches run. ``max_tokens`` shrinks when a batch runs out of memory."""

    device: torch.device
    precision: str  # fp32 | bf16 | fp16, already resolved for the device
    max_tokens: int
    max_batch_size: int | None = None
    # The encoder's weights are in ``precision`` themselves (CPU bf16, see load.cast_encoder).
    weights_cast: bool = False
    # Batches whose half-precision output was not finite and that ran again in fp32.
    fp32_reruns: int = 0

    def autocast(self) -> AbstractContextManager:
        """The context a batch runs in: autocast to ``precision``, unless the weights were cast
        (autocast would then also put the fp32 pooling and head in bf16)."""
        if self.weights_cast:
            return nullcontext()
        return hardware.autocast(self.device, self.precision)

    def run(self, forward: Callable[[], T]) -> T:
        """``forward()`` under :meth:`autocast`, again in fp32 if what it returns is not finite.

        ``forward`` returns a tensor, or a tuple whose first tensor is the one checked (what the
        caller keeps: probabilities, pooled embeddings). Only autocast in half precision is
        re-run (cast weights have no fp32 copy to run on); the first re-run of a runtime says so
        on stderr, in one line.
        """
        with self.autocast():
            output = forward()
        if self.weights_cast or not hardware.half_precision(self.precision):
            return output
        checked = output[0] if isinstance(output, tuple) else output
        if bool(torch.isfinite(checked).all()):
            return output
        del output, checked
        self.fp32_reruns += 1
        if self.fp32_reruns == 1:
            console.warn(
                f"{self.precision} overflowed on a batch (values not finite); "
                "such batches run again in fp32"
            )
        return forward()


def retryable(error: RuntimeError) -> RuntimeError:
    """The out-of-memory ``error`` with its traceback dropped; any other error is re-raised.

    Called inside the ``except`` block. The traceback holds the frames of the failed batch and
    so its tensors; without it they are freed when the block ends, and :func:`halve_budget`,
    called after it, frees the cache of memory no longer in use.
    """
    if not hardware.is_out_of_memory(error):
        raise error
    return error.with_traceback(None)


def halve_budget(runtime: Runtime, lengths: Sequence[int], error: BaseException) -> None:
    """React to ``error`` raised by a batch of proteins of ``lengths`` tokens.

    Anything but an out-of-memory error is re-raised; so is one on a lone protein, which no
    smaller batch can help. Otherwise the cached memory is freed and the budget becomes half of
    what the batch used. Call it outside the ``except`` block, with the error as
    :func:`retryable` returns it, so that the failed batch's tensors are gone by then.
    """
    if not hardware.is_out_of_memory(error):
        raise error
    if len(lengths) <= 1:
        raise UserError(
            f"out of memory on a single protein of {max(lengths, default=0)} tokens on "
            f"{runtime.device}; lower --max-length, or use --precision bf16/fp16 or a larger device"
        ) from error
    hardware.free_cached_memory(runtime.device)
    used = min(runtime.max_tokens, batching.padded_cost(lengths))
    runtime.max_tokens = max(hardware.MIN_TOKENS, used // 2)
    console.warn(
        f"out of memory on a batch of {len(lengths)} proteins ({used} padded tokens); "
        f"retrying it with up to {runtime.max_tokens} tokens a batch"
    )


def run_batches(
    lengths: Sequence[int], runtime: Runtime, work: Callable[[list[int]], T]
) -> Iterator[tuple[list[int], T]]:
    """``(index, work(index))`` for length-sorted batches of positions in ``lengths``.

    Every position comes back exactly once. A batch that runs out of memory is split (see
    :func:`halve_budget`) and its parts are yielded instead.
    """

    def plan(index: list[int]) -> list[list[int]]:
        parts = batching.inference_batches(
            [lengths[i] for i in index], runtime.max_tokens, runtime.max_batch_size
        )
        return [[index[j] for j in part] for part in parts]

    pending = deque(plan(list(range(len(lengths)))))
    while pending:
        index = pending.popleft()
        if (
            len(index) > 1
            and batching.padded_cost([lengths[i] for i in index]) > runtime.max_tokens
        ):
            pending.extendleft(reversed(plan(index)))  # planned before the budget shrank
            continue
        try:
            result = work(index)
        except RuntimeError as error:
            failure = retryable(error)
        else:
            yield index, result
            continue
        halve_budget(runtime, [lengths[i] for i in index], failure)
        pending.extendleft(reversed(plan(index)))


def score_sequences(
    model: LocalizationModel,
    backbone: Backbone,
    sequences: Sequence[str],
    runtime: Runtime,
    progress: Progress | ChunkProgress | None = None,
    *,
    with_pooled: bool = False,
) -> np.ndarray:
    """Probabilities ``[len(sequences), labels]`` in the order given; ``progress`` advances by
    each batch's proteins as the batch is done. ``with_pooled``: each row goes on with the
    pooled embedding the head read (``[len(sequences), labels + dim]``), at no extra cost."""
    model.eval()
    num_labels = model.head.linear.out_features
    width = num_labels + (model.head.linear.in_features if with_pooled else 0)
    result = np.zeros((len(sequences), width), dtype=np.float32)
    lengths = [backbone.tokens(len(s)) for s in sequences]

    @torch.inference_mode()
    def score(index: list[int]) -> np.ndarray:
        batch = backbone.tokenize([sequences[i] for i in index]).to(runtime.device)
        if not with_pooled:
            logits = runtime.run(lambda: model(batch).float())
            return torch.sigmoid(logits).cpu().numpy()

        def forward() -> tuple[torch.Tensor, torch.Tensor]:
            pooled = model.embed(batch)
            return model.head(pooled).float(), pooled.float()

        logits, pooled = runtime.run(forward)
        return torch.cat([torch.sigmoid(logits), pooled], dim=1).cpu().numpy()

    for index, probabilities in run_batches(lengths, runtime, score):
        result[index] = probabilities
        if progress is not None:
            progress.advance(len(index))
    return result
