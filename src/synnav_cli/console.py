"""Messages for people go to stderr; data goes to stdout. One switch for how much is said."""

from __future__ import annotations

import sys
import time

_level = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(*, quiet: bool = False, verbose: bool = False) -> None:
    global _level
    _level = 0 if quiet else 2 if verbose else 1


def info(message: str) -> None:
    if _level >= 1:
        print(message, file=sys.stderr, flush=True)


def detail(message: str) -> None:
    if _level >= 2:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"Warning: {message}", file=sys.stderr, flush=True)


class Progress:
    """A one-line progress counter on stderr, shown only on a terminal and when not quiet."""

    def __init__(self, total: int, label: str, unit: str = "proteins") -> None:
        self.total, self.label, self.unit = total, label, unit
        self.done = 0
        self.start = time.monotonic()
        self.enabled = _level >= 1 and sys.stderr.isatty()
        self._last = 0.0

    def advance(self, count: int, suffix: str = "") -> None:
        self.done += count
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and self.done < self.total):
            return
        self._last = now
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        line = f"{self.label}: {self.done}/{self.total} {self.unit}, {rate:.1f}/s, ETA {eta:.0f}s"
        print(f"\r{line} {suffix}".ljust(79), end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.done:
            print(file=sys.stderr, flush=True)
