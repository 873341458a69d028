"""torch.distributed for commands launched by ``torchrun``: process group, rank, sharding.

Without ``WORLD_SIZE > 1`` in the environment every helper degrades to the single-process
answer (rank 0 of 1, barriers do nothing), so callers need no special case.

Sharding is round-robin (item ``i`` belongs to rank ``i % world``): every rank can take its
share of a list or a stream without knowing its length, and the shares interleave back into input
order (:func:`score_sharded` on every rank; :func:`map_sharded` on rank 0 alone, for results as
large as per-residue embeddings).
The same rule cuts a FASTA into ``--shard I/N`` parts for array jobs (:func:`take_shard`).

Only rank 0 talks and writes: the other ranks' stdout goes to the null device and their console
says warnings and errors only, so every command prints its result once.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from itertools import islice

import numpy as np
import torch
import torch.distributed as dist

from synnav_cli import console
from synnav_cli.errors import UserError, one_line, quoted
from synnav_cli.runtime import hardware

# Ranks wait at barriers while rank 0 writes a model directory or scores a long test split.
TIMEOUT = timedelta(hours=2)
# How long a rank waits in the rendezvous before it says what it waits for.
WAIT_NOTICE_SECONDS = 10.0
# Results go to rank 0 in pieces of about this many bytes of arrays (see :func:`gather_to_main`).
PIECE_BYTES = 64 << 20


def requested() -> bool:
    """True when a launcher (torchrun) asked for more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def backend_spec(use_cuda: bool) -> str:
    """The process group's backends: gloo alone on CPU; on GPUs nccl for CUDA tensors and gloo
    for CPU ones.

    nccl serves CUDA tensors only. The small agreements between ranks (:func:`any_rank`,
    :func:`sum_across`, :func:`min_across`, object broadcasts, barriers) are CPU values, and
    must not force a device copy and a stream sync each step, so they go through gloo.
    """
    return "cpu:gloo,cuda:nccl" if use_cuda else "gloo"


def init() -> None:
    """Join the process group torchrun described in the environment; idempotent.

    gloo on CPU; with CUDA, one GPU per local rank and nccl for it (see :func:`backend_spec`).
    Ranks other than 0 say only warnings and errors, so a run prints its messages once.
    """
    if not requested() or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    use_cuda = torch.cuda.is_available()
    device_id = None
    if use_cuda:
        device_id = torch.device("cuda", local_rank())
        torch.cuda.set_device(device_id)
    # The rendezvous blocks until every rank has joined: a rank torchrun did not start (or one
    # that died) would leave the others waiting in silence, so say so once, after a while.
    notice = threading.Timer(WAIT_NOTICE_SECONDS, _say_waiting)
    notice.daemon = True
    notice.start()
    try:
        # device_id binds this rank's nccl communicator to its own GPU at once, instead of
        # letting the first collective guess the device.
        dist.init_process_group(
            backend_spec(use_cuda), init_method="env://", timeout=TIMEOUT, device_id=device_id
        )
    except getattr(dist, "DistStoreError", ()) as error:
        raise UserError(
            f"{_rendezvous()} gave up after {TIMEOUT} waiting for the other processes "
            f"({one_line(error)}); start all WORLD_SIZE ranks"
        ) from None
    finally:
        notice.cancel()
    atexit.register(teardown)
    if dist.get_rank() != 0:
        console.set_verbosity(quiet=True)
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115  (for the process's life)


def _rendezvous() -> str:
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return f"rank {os.environ.get('RANK', '?')} (rendezvous at {where})"


def _say_waiting() -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    console.warn(
        f"{_rendezvous()} is waiting for the other {world - 1} of {world} processes to join "
        f"({WAIT_NOTICE_SECONDS:g} s so far; it gives up after {TIMEOUT}): if a rank was not "
        "started or has died, start it or stop this run"
    )


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def pick_device(requested_device: str) -> torch.device:
    """Each rank gets its own GPU (``cuda:LOCAL_RANK``); otherwise ``hardware.pick_device``."""
    if active() and torch.cuda.is_available() and requested_device in ("auto", "cuda"):
        return torch.device("cuda", local_rank())
    return hardware.pick_device(requested_device)


def gather(obj: object) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    result: list = [None] * world_size()
    dist.all_gather_object(result, obj)
    return result


def broadcast(obj: object) -> object:
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _reduce(value: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    """All-reduce a CPU tensor (through gloo on a GPU run: see :func:`backend_spec`)."""
    dist.all_reduce(value, op=op)
    return value


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any; keeps ranks agreeing on when to stop."""
    if not active():
        return flag
    return bool(_reduce(torch.tensor([int(flag)]), dist.ReduceOp.MAX).item())


def sum_across(value: float) -> float:
    if not active():
        return value
    return float(_reduce(torch.tensor([value], dtype=torch.float64), dist.ReduceOp.SUM).item())


def min_across(value: int) -> int:
    """The smallest ``value`` of all ranks, on every rank."""
    if not active():
        return value
    return int(_reduce(torch.tensor([value], dtype=torch.int64), dist.ReduceOp.MIN).item())


def shard(items: Sequence) -> list:
    """This rank's round-robin share of ``items``."""
    return list(items[rank() :: world_size()])


def pieces(items: list, limit: int = PIECE_BYTES) -> list[list]:
    """``items`` cut, in order, into runs holding at most ``limit`` bytes of numpy arrays (an item
    larger than that on its own); non-array values count 64 bytes."""

    def size(value: object) -> int:
        if isinstance(value, np.ndarray):
            return value.nbytes
        if isinstance(value, (tuple, list)):
            return sum(size(v) for v in value)
        return 64

    runs: list[list] = []
    run: list = []
    held = 0
    for item in items:
        cost = size(item)
        if run and held + cost > limit:
            runs.append(run)
            run, held = [], 0
        run.append(item)
        held += cost
    if run:
        runs.append(run)
    return runs


def gather_to_main(items: list) -> list[list] | None:
    """Every rank's ``items``, in rank order, on rank 0; None on the other ranks.

    They travel in :func:`pieces`, one object gather to rank 0 a piece: an object collective
    pickles each rank's part into a byte tensor and holds all of them on the receiving rank at
    once, so whole parts (a chunk of per-residue embeddings is some hundred MB a rank) would
    cost several times the results; pieces bound that to ``PIECE_BYTES`` a rank. No other rank
    receives anything but the piece counts.
    """
    if not active():
        return [list(items)]
    mine = pieces(list(items), PIECE_BYTES)
    rounds = max(gather(len(mine)))
    received = [[] for _ in range(world_size())] if is_main() else None
    for i in range(rounds):
        piece = mine[i] if i < len(mine) else []
        box = [None] * world_size() if received is not None else None
        dist.gather_object(piece, box, dst=0)
        if received is not None:
            for part, got in zip(received, box):
                part.extend(got)
    return received


def score_sharded(score: Callable[[list], np.ndarray], items: Sequence) -> np.ndarray:
    """``score(items)`` with each rank scoring its share; the full result is on every rank.

    Every rank gets it because training's ranks each decide from the dev scores whether an epoch
    is the best; a row is a few numbers a protein, small beside the per-residue results that
    :func:`map_sharded` sends to rank 0 alone."""
    if not active():
        return score(list(items))
    parts = gather(score(shard(items)))
    width = next((p.shape[1] for p in parts if p.ndim == 2 and len(p)), 0)
    result = np.zeros((len(items), width), dtype=np.float32)
    for r, part in enumerate(parts):
        if len(part):
            result[r :: world_size()] = part
    return result


def map_sharded(function: Callable[[list], list], items: Sequence) -> list | None:
    """``function(items)`` (one result per item) with each rank mapping its share; the results,
    in input order, on rank 0, which writes them, and None on the other ranks. For results of
    any shape (per-residue arrays), where :func:`score_sharded` needs one row of numbers per
    item; they reach rank 0 in bounded pieces (:func:`gather_to_main`)."""
    if not active():
        return list(function(list(items)))
    parts = gather_to_main(function(shard(items)))
    if parts is None:
        return None
    result: list = [None] * len(items)
    for r, part in enumerate(parts):
        result[r :: world_size()] = part
    return result


def broadcast_chunks(items: Iterable | None, size: int) -> Iterator[list]:
    """Lists of up to ``size`` items read on rank 0 (``items`` is ignored elsewhere), on every rank.

    Only rank 0 opens the input, so standard input works under torchrun too. A :class:`UserError`
    raised while rank 0 reads (a malformed record) is raised on every rank, so none waits forever.
    """
    if not active():
        iterator = iter(items or ())
        while chunk := list(islice(iterator, size)):
            yield chunk
        return
    iterator = iter(items or ()) if is_main() else None
    while True:
        chunk, error = [], None
        if iterator is not None:
            try:
                chunk = list(islice(iterator, size))
            except UserError as failure:
                error = str(failure)
        chunk, error = broadcast((chunk, error))
        if error is not None:
            raise UserError(error)
        if not chunk:
            return
        yield chunk


MAX_SHARDS = 1_000_000_000


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (1-based, as array-job task ids usually are) as ``(I - 1, N)``."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise UserError(f"--shard {quoted(text)}: expected I/N, e.g. 3/8") from None
    if not sep or n < 1 or not 1 <= i <= n:
        raise UserError(f"--shard {quoted(text)}: expected I/N with 1 <= I <= N")
    if n > MAX_SHARDS:  # islice takes no step past sys.maxsize, and no job has that many parts
        raise UserError(f"--shard {quoted(text)}: at most {MAX_SHARDS:,} shards")
    return i - 1, n


def take_shard(items: Iterable, index: int, count: int) -> Iterator:
    """Items ``index``, ``index + count``, ...: part ``index`` of ``count`` round-robin parts."""
    return islice(items, index, None, count)
