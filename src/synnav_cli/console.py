"""Messages for people go to stderr; data goes to stdout. One switch for how much is said."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

_level = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(*, quiet: bool = False, verbose: bool = False) -> None:
    global _level
    _level = 0 if quiet else 2 if verbose else 1


@contextmanager
def quieted() -> Iterator[None]:
    """Say nothing but warnings and errors inside the block, as ``--quiet`` does, then restore
    the level: the Python API's calls run so (docs/python.md)."""
    global _level
    saved, _level = _level, 0
    try:
        yield
    finally:
        _level = saved


def info(message: str) -> None:
    if _level >= 1:
        print(message, file=sys.stderr, flush=True)


def detail(message: str) -> None:
    if _level >= 2:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Progress of one loop on stderr, silent with --quiet and on every torchrun rank but 0.

    On a terminal a live tqdm bar. Off a terminal (a SLURM log, ``nohup``) one plain line at
    most every :attr:`INTERVAL` seconds and at each 10% step, with done/total, rate and ETA;
    nothing in the first :attr:`QUIET_START` seconds, so a quick loop leaves the log alone.
    ``total`` None (or 0) means unknown, e.g. a stream: then done and rate only. A caller that
    learns the total later sets :attr:`total`. ``bar``: a live bar whatever the level and
    wherever stderr goes (the Python API's ``progress=True``: a notebook's stderr is no terminal).
    """

    INTERVAL = 30.0
    QUIET_START = 5.0

    def __init__(
        self, total: int | None, label: str, unit: str = "proteins", *, bar: bool = False
    ) -> None:
        self.total, self.label, self.unit = total or None, label, unit
        self.done = 0
        self.start = _clock()
        self._last = self.start
        self._step = 0  # tenths of the total already reported
        self._logged = -1  # ``done`` at the last plain line
        shown = _level >= 1 and os.environ.get("RANK", "0") == "0"
        self.mode = "off" if not shown else "bar" if _isatty(sys.stderr) else "log"
        if bar:
            self.mode = "bar"
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total,
                desc=label,
                unit=unit.removesuffix("s"),
                file=sys.stderr,
                dynamic_ncols=True,
                mininterval=0.2,
            )

    def advance(self, count: int, suffix: str = "") -> None:
        self.done += count
        if self._bar is not None:
            if self._bar.total != self.total:
                self._bar.total = self.total
            if suffix:
                self._bar.set_postfix_str(suffix, refresh=False)
            self._bar.update(count)
        elif self.mode == "log":
            now = _clock()
            step = min(10, self.done * 10 // self.total) if self.total else 0
            if now - self.start < self.QUIET_START:
                return
            if step > self._step or now - self._last >= self.INTERVAL:
                self._step, self._last = step, now
                self._log(now, suffix)

    def _log(self, now: float, suffix: str = "") -> None:
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        if self.total:
            share = min(100, self.done * 100 // self.total)
            line = f"{self.label}: {self.done}/{self.total} {self.unit} ({share}%), {rate:.1f}/s"
            if self.done < self.total and rate > 0:
                line += f", ETA {_duration((self.total - self.done) / rate)}"
        else:
            line = f"{self.label}: {self.done} {self.unit}, {rate:.1f}/s"
        line += f", {_duration(elapsed)} elapsed"
        print(f"{line}, {suffix}" if suffix else line, file=sys.stderr, flush=True)
        self._logged = self.done

    def chunk(self, proteins: int) -> ChunkProgress:
        """The progress of one chunk of ``proteins``, advanced batch by batch (see
        :class:`ChunkProgress`)."""
        return ChunkProgress(self, proteins)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "log" and 0 <= self._logged < self.done:
            self._log(_clock())  # a long run's last word: how many in the end, and how fast
        self.mode = "off"


class ChunkProgress:
    """``proteins`` of a :class:`Progress`, done as the batches of a chunk are scored.

    The batches hold pieces of those proteins (windows of a long one; under torchrun this rank's
    share of the chunk): :meth:`over` says how many pieces there are, :meth:`advance` moves the
    progress by the proteins the pieces done so far stand for, and :meth:`finish` by the rest,
    so that the progress meets the chunk's end exactly when the chunk is written.
    """

    def __init__(self, progress: Progress, proteins: int) -> None:
        self.progress, self.proteins = progress, proteins
        self.pieces = self.pieces_done = self.reported = 0

    def over(self, pieces: int) -> ChunkProgress:
        self.pieces, self.pieces_done = pieces, 0
        return self

    def advance(self, count: int, suffix: str = "") -> None:
        self.pieces_done += count
        if self.pieces:
            self._move_to(
                min(self.proteins, self.pieces_done * self.proteins // self.pieces), suffix
            )

    def finish(self) -> None:
        self._move_to(self.proteins)

    def _move_to(self, proteins: int, suffix: str = "") -> None:
        if proteins > self.reported:
            self.progress.advance(proteins - self.reported, suffix)
            self.reported = proteins


def _clock() -> float:
    return time.monotonic()


def _isatty(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()
