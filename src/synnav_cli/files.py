"""Every file synnav writes: replaced in one step, with the user's permissions, at a path checked
before anything is written, by one writer at a time.

Writes go to a temporary sibling that is renamed over the target, so a reader (or a crash) never
sees half a file. ``tempfile`` creates its files 0600 and its directories 0700 whatever the umask;
synnav widens them to what the umask allows, so that a model shared on a group server is readable
by the group, as any other file the user creates would be.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO

from synnav_cli.errors import UserError, one_line


@lru_cache(maxsize=1)
def _umask() -> int:
    # The only portable way to read the umask is to set it; set it straight back.
    current = os.umask(0o022)
    os.umask(current)
    return current


def _open_mode(directory: bool) -> int:
    return (0o777 if directory else 0o666) & ~_umask()


def temporary_dir(parent: Path, prefix: str) -> Path:
    """A new directory in ``parent`` with the permissions ``mkdir`` would give it."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    os.chmod(path, _open_mode(directory=True))
    return path


def temporary_file(
    parent: Path, prefix: str, suffix: str = ".tmp", mode: int | None = None
) -> tuple[int, Path]:
    """An open descriptor and path of a new file in ``parent``, permissions ``mode`` (default:
    as ``open`` gives)."""
    fd, name = tempfile.mkstemp(dir=parent, prefix=prefix, suffix=suffix)
    os.fchmod(fd, _open_mode(directory=False) if mode is None else mode)
    return fd, Path(name)


def replacing_mode(path: Path) -> int:
    """The permissions for a file that replaces ``path``: those of the regular file there (a 0600
    file stays private), else what the umask gives a new file."""
    try:
        status = os.lstat(path)
    except OSError:
        return _open_mode(directory=False)
    if not stat.S_ISREG(status.st_mode):
        return _open_mode(directory=False)
    return stat.S_IMODE(status.st_mode) & 0o777


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; made durable and renamed over ``path`` when the
    block ends, removed (``path`` as it was) when it fails, a full disk included. The new file
    keeps the permissions of the one it replaces (see :func:`replacing_mode`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = replacing_mode(path)
    # Readable and writable by its owner while it is written, whatever the file it replaces.
    fd, tmp = temporary_file(path.parent, prefix=f".{path.name}.", mode=mode | 0o600)
    os.close(fd)
    try:
        yield tmp
        with tmp.open("rb") as handle:
            os.fsync(handle.fileno())
        # Writers that replace the file themselves (safetensors does) leave it 0600 again.
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) raises KeyboardInterrupt in the block, as Ctrl-C
    does, so that the temporary files of :func:`atomic_path` are removed on the way out instead of
    being left behind by a process the default handler ends at once."""

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, then rename it over (see
    :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)


def save_tensors(path: Path, tensors: dict) -> None:
    """``tensors`` as a safetensors file at ``path``, replaced atomically. safetensors raises its
    own error type for a full disk; that is an ``OSError`` here (one line from the CLI), and the
    temporary file goes as for any failed write."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp))
        except SafetensorError as error:
            code = re.search(r"\(os error (\d+)\)", str(error))
            if code is None:
                raise UserError(f"writing {path} failed: {one_line(error)}") from None
            raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None

    replace_atomically(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` in one step: the old file (if any) stays whole until replaced."""

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            handle.write(text)

    replace_atomically(path, write)


def write_json_atomic(path: Path, payload: object) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def check_output_file(out: Path, *, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse an output path that is not a regular file or a new name, or that is an input.

    A FIFO or a device node would be replaced by a regular file (or, opened, would block or
    write to hardware); an input would be destroyed by its own results.
    """
    out = Path(out)
    try:
        status = out.stat()
    except FileNotFoundError:
        check_output_folder(out)
        return
    except OSError as error:
        raise UserError(f"cannot use {out} as the output: {error.strerror}") from None
    if stat.S_ISDIR(status.st_mode):
        raise UserError(f"--out {out} is a directory; give a file name")
    if not stat.S_ISREG(status.st_mode):
        raise UserError(
            f"--out {out} is not a regular file (a pipe, socket or device); "
            "give a file name, or write to stdout"
        )
    for source in inputs:
        if _same_file(source, status):
            where = " (on standard input)" if _is_stdin(source) else ""
            raise UserError(f"--out {out} is the input file{where}; its results would replace it")


def check_output_folder(out: Path) -> None:
    """Refuse ``out`` when the folder it would go in does not exist: a mistyped path is said,
    not quietly made (as the shell's ``>`` and ``sort -o`` do)."""
    folder = Path(out).parent
    if not folder.is_dir():
        missing = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"--out {out}: the folder {folder} {missing}; create it first")


def _same_file(source: str | Path, status: os.stat_result) -> bool:
    """Whether the input ``source`` is the file whose ``stat`` is ``status``. For standard input
    (``-`` or its spooled copy) that is the file the shell opened, as in
    ``synnav predict - --out in.fa < in.fa``."""
    try:
        other = os.fstat(sys.stdin.fileno()) if _is_stdin(source) else os.stat(source)
    except (OSError, ValueError, AttributeError):  # no such file; stdin closed or not a file
        return False
    return (other.st_dev, other.st_ino) == (status.st_dev, status.st_ino)


def open_for_writing(path: Path, *, append: bool, mode: int | None = None) -> int:
    """A descriptor on ``path`` as a regular file: never through a symlink, never a FIFO.

    ``append`` keeps the content (to continue a partial file); otherwise the file is emptied.
    ``mode`` sets its permissions (for a file that will replace another, see
    :func:`replacing_mode`).
    """
    fd = _open_no_follow(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_NONBLOCK", 0), "write")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file; remove it or choose another --out")
    if mode is not None:
        os.fchmod(fd, mode)
    os.set_blocking(fd, True)
    if not append:
        os.ftruncate(fd, 0)
    return fd


def real_folder(folder: Path) -> bool:
    """True when ``folder`` is a folder, False when nothing is there. A symbolic link (to a folder
    or not) or a file at the name is refused in one line: synnav's own folders (``FILE.partial/``,
    a training workspace) are never written through a link someone planted there."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(mode):
        raise UserError(f"{folder} is a symbolic link; synnav does not write through links")
    if not stat.S_ISDIR(mode):
        raise UserError(f"{folder} is not a folder; remove it or choose another --out")
    return True


def make_real_folder(folder: Path) -> None:
    """``folder`` as a :func:`real_folder`, created if missing. The creation is exclusive: a link
    planted at the name after the check makes it fail (and be refused), never be followed."""
    folder = Path(folder)
    if real_folder(folder):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        real_folder(folder)  # made meanwhile: a folder (another run's) is fine, anything else not


@contextmanager
def exclusive_lock(path: Path, holder: str) -> Iterator[None]:
    """Hold ``path`` as a lock for as long as the block runs; refuse at once if another has it.

    ``holder`` names the output in the refusal. The lock file is removed on release, so finished
    outputs do not gather lock files; a process that opened the old file just before the removal
    sees that its inode is no longer the one at ``path`` and tries again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = _open_no_follow(path, os.O_RDWR | os.O_CREAT, "lock")
        if not _try_lock(fd):
            os.close(fd)
            raise UserError(
                f"another synnav run is writing {holder}; wait for it to finish "
                "or choose another output"
            )
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        try:
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)


def _open_no_follow(path: Path, flags: int, what: str) -> int:
    """``os.open`` that refuses a symbolic link at ``path`` in one line, never following it."""
    try:
        return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UserError(
                f"{path} is a symbolic link; synnav does not {what} through links"
            ) from None
        raise


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


# Files readable_twice spooled standard input to: messages call them "standard input".
_SPOOLED_STDIN: set[str] = set()


def input_name(source: str | Path) -> str:
    """What messages call an input: its path, or "standard input" (also for a spooled copy)."""
    return "standard input" if _is_stdin(source) else str(source)


def _is_stdin(source: str | Path) -> bool:
    """``-``, or the file :func:`readable_twice` spooled standard input to."""
    return str(source) == "-" or str(source) in _SPOOLED_STDIN


@contextmanager
def readable_twice(fasta: str) -> Iterator[str]:
    """A path to ``fasta`` that can be read more than once: standard input is spooled to a file."""
    if fasta != "-":
        yield fasta
        return
    fd, tmp = tempfile.mkstemp(prefix="synnav-stdin-", suffix=".fasta")
    _SPOOLED_STDIN.add(tmp)
    try:
        # Bytes as they come: the reader decodes them, and decompresses gzip, bzip2 or xz.
        with os.fdopen(fd, "wb") as handle:
            shutil.copyfileobj(sys.stdin.buffer, handle)
        yield tmp
    finally:
        _SPOOLED_STDIN.discard(tmp)
        Path(tmp).unlink(missing_ok=True)


# Output suffix -> compression (:func:`compressing_writer`); input is told by its bytes instead.
OUTPUT_COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz"}


def compressing_writer(raw: IO[bytes], compression: str) -> IO[bytes]:
    """A binary stream that writes ``compression`` (a value of :data:`OUTPUT_COMPRESSIONS`) into
    ``raw``; closing it leaves ``raw`` open. The gzip header holds no file name and no time, so
    the same rows always give the same bytes."""
    import bz2
    import gzip
    import lzma

    if compression == "gzip":
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
    if compression == "bzip2":
        return bz2.BZ2File(raw, mode="wb")
    if compression == "xz":
        return lzma.LZMAFile(raw, mode="wb")
    raise ValueError(f"unknown compression {compression!r}")


@contextmanager
def output_handle(
    out: Path | None, *, inputs: Iterable[str | Path] = (), compression: str | None = None
) -> Iterator[IO[str]]:
    """stdout, or ``out`` written to a temporary sibling and renamed into place when complete,
    compressed with ``compression`` (gzip, bzip2 or xz) when given.

    ``out`` must be a new name or a regular file, and none of ``inputs``.
    """
    if out is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    out = Path(out)
    check_output_file(out, inputs=inputs)
    with atomic_path(out) as tmp:
        if compression is None:
            with tmp.open("w", encoding="utf-8", newline="") as handle:
                yield handle
            return
        with (
            tmp.open("wb") as raw,
            compressing_writer(raw, compression) as packed,
            io.TextIOWrapper(packed, encoding="utf-8", newline="") as handle,
        ):
            yield handle
