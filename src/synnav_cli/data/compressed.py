"""Opening input text that may be compressed: gzip, bzip2 or xz, told by its first bytes.

Proteomes are distributed gzipped, and a file's name does not always say so (``proteome.fa``
that is gzip inside, or gzip on standard input), so the format is read from the magic bytes.
Standard input is peeked without losing a byte. A truncated or corrupt stream is a
:class:`UserError` naming the input, never a traceback from the decompressor.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
import zlib
from pathlib import Path
from typing import IO

from synnav_cli.errors import UserError

# magic bytes -> (name in messages, opener of a binary stream)
FORMATS = {
    b"\x1f\x8b": ("gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    b"BZh": ("bzip2", lambda raw: bz2.BZ2File(raw, mode="rb")),
    b"\xfd7zXZ\x00": ("xz", lambda raw: lzma.LZMAFile(raw, mode="rb")),
}
UNSUPPORTED = {b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd"}
SUFFIXES = (".gz", ".bz2", ".xz")
_DECOMPRESSION_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)


def content_suffix(path: str | Path) -> str:
    """The suffix that names the content: ``.json`` for ``data.json.gz``, lower-case."""
    path = Path(path)
    if path.suffix.lower() in SUFFIXES:
        path = path.with_suffix("")
    return path.suffix.lower()


def open_text(source: str | Path, label: str | None = None) -> IO[str]:
    """A text handle on ``source`` (a path, or ``"-"`` for standard input), decompressed.

    Text is UTF-8; a leading byte-order mark is dropped (utf-8-sig). Lines keep their endings
    (``newline=""``). Closing the handle never closes standard input.
    """
    stdin = str(source) == "-"
    label = label or ("standard input" if stdin else str(source))
    if stdin:
        raw: IO[bytes] = io.BufferedReader(_Borrowed(sys.stdin.buffer))
    else:
        raw = Path(source).open("rb")
    try:
        head = raw.peek(6)[:6]  # type: ignore[attr-defined]
        binary = _decompressed(raw, head, label)
    except BaseException:
        raw.close()
        raise
    return io.TextIOWrapper(binary, encoding="utf-8-sig", errors="strict", newline="")


def _decompressed(raw: IO[bytes], head: bytes, label: str) -> IO[bytes]:
    for magic, name in UNSUPPORTED.items():
        if head.startswith(magic):
            raise UserError(
                f"{label} is a {name} archive; synnav reads plain, gzip, bzip2 or xz input "
                f"(decompress it first)"
            )
    for magic, (name, opener) in FORMATS.items():
        if head.startswith(magic):
            return io.BufferedReader(_Checked(opener(raw), raw, f"{label} is not a valid {name}"))
    return raw


class _Checked(io.RawIOBase):
    """A decompressed stream whose read errors become one-line user errors."""

    def __init__(self, stream: IO[bytes], raw: IO[bytes], message: str) -> None:
        self._stream, self._raw, self._message = stream, raw, message

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self._stream.readinto(buffer)  # type: ignore[attr-defined]
        except _DECOMPRESSION_ERRORS as error:
            reason = str(error) or type(error).__name__
            if isinstance(error, EOFError):
                reason = "it ends early; the file may be truncated"
            raise UserError(f"{self._message} file ({reason})") from None

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self._raw.close()
        super().close()


class _Borrowed(io.RawIOBase):
    """Standard input's bytes, read through a buffer of our own; closing it leaves stdin open."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read1(len(buffer)) if hasattr(self._stream, "read1") else None
        if data is None:
            data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
