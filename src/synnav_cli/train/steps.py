"""How steps are taken: the learning-rate schedule, a batch split to fit memory, and stopping
cleanly at a step's end when the scheduler (or Ctrl-C) asks."""

from __future__ import annotations

import math
import signal
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from synnav_cli import console
from synnav_cli.runtime import distributed
from synnav_cli.scoring import batches
from synnav_cli.scoring.score import Runtime, halve_budget, retryable

WARMUP_FRACTION = 0.05


def lr_factor(step: int, total_steps: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def accumulate(
    backward: Callable[[list[int]], torch.Tensor],
    lengths: list[int],
    optimizer,
    runtime: Runtime,
    no_sync: Callable[[], AbstractContextManager] = nullcontext,
) -> torch.Tensor:
    """Run ``backward`` over parts of one batch that fit ``runtime.max_tokens``; summed loss.

    ``backward(part)`` takes positions within the batch and returns its share of the batch loss
    after its backward pass, so the accumulated gradient is the whole batch's. On out of memory
    the gradients are cleared, the budget halves and the same batch starts over in smaller
    parts.

    Under DistributedDataParallel ``no_sync`` is the wrapper's ``no_sync``: every part but the
    last accumulates gradients locally, and only the last backward pass all-reduces them. Each
    rank therefore takes part in exactly one gradient all-reduce a step, however many parts its
    own rows and its own memory need, so ranks that split differently stay in step. An
    out-of-memory error in a local part is retried like in one process; one in the last part
    (whose all-reduce may have begun on other ranks) ends the run (lower --max-tokens).
    """
    while True:
        parts = batches.inference_batches(lengths, runtime.max_tokens)
        in_last_part = False
        try:
            total = None
            for number, part in enumerate(parts):
                in_last_part = number == len(parts) - 1
                with nullcontext() if in_last_part else no_sync():
                    loss = backward(part)
                total = loss if total is None else total + loss
            return total
        except RuntimeError as error:
            if distributed.active() and in_last_part:
                raise
            failure = retryable(error)
        # Out of the except block the failed part's frames and tensors are gone.
        optimizer.zero_grad(set_to_none=True)
        halve_budget(runtime, lengths, failure)


class StopRequest:
    """Turns SIGTERM/SIGINT into a checkpoint at the end of the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt
        self.requested = True
        console.info("Stopping after this step; the checkpoint will allow --resume.")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
