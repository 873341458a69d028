"""Result files that are never half-written and never redone: ``FILE.partial`` and its progress.

While ``synnav predict --out FILE`` runs, rows go to ``FILE.partial``; after every chunk the rows
are flushed to disk and ``FILE.partial.json`` records how many records and bytes are complete, a
sha256 of those bytes and of those records (identifiers and sequences) and a fingerprint of the
model and options. Only a finished run renames ``FILE.partial`` to ``FILE``, so ``FILE`` is
always whole. A compressed ``FILE`` (``out.tsv.gz``) is built the same way: ``FILE.partial``
holds the plain rows, compressed into ``FILE`` when the run completes.

Run the same command again after a crash, a kill or a full disk and it checks the partial file's
first ``bytes`` against the record (their sha256, whole rows, as many as recorded), truncates it
there, reads past the records already done (checking they are the same records) and appends the
rest. A record the partial file does not match starts the file from scratch, with one warning; a
different model, options or input is refused, never mixed in.

Parts written with ``--shard I/N`` hold records ``I-1, I-1+N, ...`` and have a shard record
beside them (:mod:`.parts`); :func:`merge_parts` checks the records and interleaves the parts back
into input order.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO

from synnav_cli import console
from synnav_cli.data.fasta import FastaRecord, read_fasta
from synnav_cli.errors import UserError
from synnav_cli.files import (
    atomic_path,
    check_output_file,
    compressing_writer,
    open_for_writing,
    replacing_mode,
    write_json_atomic,
)
from synnav_cli.predict.parts import check_parts, record_path, write_record
from synnav_cli.predict.writer import spreadsheet_text


def digest_record(digest, record: FastaRecord) -> None:
    """Add ``record`` to a running sha256 of an input's records (resume checks of predict and
    embed: the records, not the file's bytes)."""
    digest.update(f"{record.id}\t{record.sequence}\n".encode())


def input_digest(source: str, *, keep_invalid: bool = False) -> tuple[str, int]:
    """sha256 of every record's identifier and sequence, and the record count.

    The records, not the file's bytes: the same proteins gzipped or re-wrapped are the same input.
    """
    digest, count = hashlib.sha256(), 0
    for record in read_fasta(source, keep_invalid=keep_invalid):
        digest_record(digest, record)
        count += 1
    return digest.hexdigest(), count


class ResumableOutput:
    """``out`` built in ``out.partial``, checkpointed per chunk, renamed into place when complete.

    Use: :meth:`skip_done` on the record stream, then :meth:`open` once the first new chunk is in
    hand, :meth:`checkpoint` after each chunk's rows are written, :meth:`finish` at the end.
    """

    def __init__(self, out: Path, fingerprint: dict, compression: str | None = None) -> None:
        self.out = Path(out)
        self.compression = compression  # gzip, bzip2 or xz for FILE; FILE.partial is plain
        self.partial = self.out.with_name(self.out.name + ".partial")
        self.state_path = self.out.with_name(self.out.name + ".partial.json")
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from disk
        self.digest = hashlib.sha256()
        self.output_digest = hashlib.sha256()  # of the partial file's bytes, as they are written
        self.header_lines = 0
        self.rows = 0
        self.handle: IO[str] | None = None
        # For a --shard part: (index, count), the whole input's sha256 and record count, written
        # beside the finished part (parts.write_record) for merge to check.
        self.shard_of: tuple[tuple[int, int], str, int] | None = None
        self._state = self._read_state()

    @staticmethod
    def lock_path(out: Path) -> Path:
        """The lock a run holds while it writes ``out`` (see ``files.exclusive_lock``)."""
        out = Path(out)
        return out.with_name(out.name + ".lock")

    def _read_state(self) -> dict | None:
        if not (self.state_path.is_file() and self.partial.is_file()):
            return None
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            rows, size, sha = int(state["rows"]), int(state["bytes"]), str(state["input_sha256"])
            written, header_lines = str(state["output_sha256"]), int(state["header_lines"])
        except (OSError, ValueError, KeyError, TypeError, RecursionError, OverflowError):
            # Not JSON, nested too deeply, not an object, a size of 1e999 or of another kind.
            console.warn(f"{self.state_path} is unreadable; starting {self.out} from scratch")
            return None
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(
                f"{self.partial} holds an interrupted run with another model or other options; "
                f"delete it and {self.state_path.name} to start over"
            )
        problem = self._check_partial(rows, size, header_lines, written)
        if problem is not None:
            console.warn(
                f"{self.partial} does not match its progress record ({problem}); "
                f"starting {self.out} from scratch"
            )
            self.output_digest = hashlib.sha256()
            return None
        self.header_lines = header_lines
        return {"rows": rows, "bytes": size, "input_sha256": sha}

    def _check_partial(self, rows: int, size: int, header_lines: int, sha: str) -> str | None:
        """Why the partial file's first ``size`` bytes are not the header and ``rows`` whole rows
        whose sha256 is ``sha``, or None when they are (``output_digest`` then holds their hash,
        for the rows still to come)."""
        if rows < 0 or size < 0 or header_lines < 0:
            return "negative counts"
        try:
            fd = os.open(self.partial, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as error:
            return f"it cannot be read: {error.strerror or error}"
        digest, lines, last, left = hashlib.sha256(), 0, b"", size
        with open(fd, "rb") as handle:
            while left:
                block = handle.read(min(left, 1 << 20))
                if not block:
                    return "the file is shorter"
                digest.update(block)
                lines += block.count(b"\n")
                last, left = block[-1:], left - len(block)
        if size and last != b"\n":
            return "its offset falls inside a row"
        if lines != header_lines + rows:
            return f"{lines - header_lines} rows where it says {rows}"
        if digest.hexdigest() != sha:
            return "the content differs"
        self.output_digest = digest
        return None

    @property
    def resuming(self) -> bool:
        return self._state is not None

    @property
    def rows_done(self) -> int:
        """Records an interrupted run already wrote (0 for a new file)."""
        return self._state["rows"] if self._state else 0

    def skip_done(self, records: Iterable[FastaRecord]) -> Iterator[FastaRecord]:
        """``records`` past those already written, each record hashed as it goes by.

        The records skipped must be the ones the partial file was made from; otherwise this
        raises before anything is scored.
        """
        iterator = iter(records)
        done = self._state["rows"] if self._state else 0
        for number in range(done):
            record = next(iterator, None)
            if record is None:
                raise UserError(
                    f"{self.partial} holds {done} records but the input has only {number}; "
                    f"delete it to start over"
                )
            digest_record(self.digest, record)
        if done and self.digest.hexdigest() != self._state["input_sha256"]:
            raise UserError(
                f"{self.partial} was made from another input (its first {done} records "
                f"differ); delete it and {self.state_path.name} to start over"
            )
        self.rows = done
        if done:
            console.info(f"Resuming {self.out}: {done} records already done.")
        for record in iterator:
            digest_record(self.digest, record)
            yield record

    def open(self, header: str) -> IO[str]:
        """The handle rows are written to; ``header`` starts a new file, a resumed one has it."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        check_output_file(self.out)  # it may have become something else while the model loaded
        # The partial file is opened without following links: a link planted at that name must
        # not redirect the results into someone else's file.
        fd = open_for_writing(
            self.partial, append=self._state is not None, mode=replacing_mode(self.out)
        )
        if self._state is not None:
            os.ftruncate(fd, self._state["bytes"])  # drop a chunk the crash left half-written
            os.lseek(fd, self._state["bytes"], os.SEEK_SET)
        # Every byte written is hashed on its way to the file, for the progress record.
        self.handle = io.TextIOWrapper(
            io.BufferedWriter(_HashedFile(fd, self.output_digest)), encoding="utf-8", newline=""
        )
        if self._state is None:
            self.handle.write(header)
            self.header_lines = header.count("\n")
            self.checkpoint(0)
        return self.handle

    def checkpoint(self, rows: int) -> None:
        """``rows`` more records are written; make them durable and record the progress."""
        assert self.handle is not None
        self.rows += rows
        self.handle.flush()
        os.fsync(self.handle.fileno())
        write_json_atomic(
            self.state_path,
            {
                "rows": self.rows,
                "bytes": self.handle.tell(),
                "input_sha256": self.digest.copy().hexdigest(),
                "output_sha256": self.output_digest.copy().hexdigest(),
                "header_lines": self.header_lines,
                "fingerprint": self.fingerprint,
            },
        )

    def finish(self) -> None:
        assert self.handle is not None
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        if self.shard_of is not None:  # before the rename: a finished part always has its record
            shard, sha, records = self.shard_of
            # The model's path may differ from node to node; its metadata and weights may not.
            run = {k: v for k, v in self.fingerprint.items() if k not in {"shard", "model"}}
            write_record(
                self.out, shard=shard, input_sha256=sha, input_records=records, rows=self.rows,
                sha256=self.output_digest.hexdigest(), run=run,
            )
        if self.compression is None:
            os.replace(self.partial, self.out)
        else:
            # A crash while this runs leaves the partial file and its record: the next run
            # finds every row done and compresses again.
            with (
                atomic_path(self.out) as tmp,
                tmp.open("wb") as raw,
                compressing_writer(raw, self.compression) as packed,
                self.partial.open("rb") as rows,
            ):
                shutil.copyfileobj(rows, packed, 1 << 20)
            self.partial.unlink()
        self.state_path.unlink(missing_ok=True)

    def close_unfinished(self) -> None:
        """After a failure: keep what is complete for the next run and say so."""
        if self.handle is None:
            return
        try:
            self.handle.close()
        except OSError:
            pass  # the disk that failed the write may fail the flush too; the checkpoint stands
        if self.rows:
            console.info(
                f"{self.rows} finished records are kept in {self.partial}; "
                f"run the same command again to continue."
            )


class _HashedFile(io.FileIO):
    """A file descriptor opened for writing that adds every byte written to ``digest``."""

    def __init__(self, fd: int, digest) -> None:
        super().__init__(fd, "w")
        self.digest = digest

    def write(self, data) -> int | None:
        written = super().write(data)
        if written:
            self.digest.update(memoryview(data).cast("B")[:written])
        return written


def merge_parts(
    parts: Sequence[Path], handle: IO[str], expected_ids: Iterable[str] | None = None
) -> int:
    """Interleave ``--shard 1/N`` ... ``N/N`` outputs (given in that order) into input order.

    Parts are tsv or csv (one header, identical in every part) or jsonl. Rows are copied byte
    for byte, one line at a time, so memory does not grow with the parts. Each part's shard
    record (``PART.shard.json``) must show shards 1..N of one run, whole and in order; a part
    without one is merged only with ``expected_ids`` (the input's identifiers, in order), which
    check every row. Row counts must fit round-robin shards of one input either way. Returns the
    row count.
    """
    if not parts:
        raise UserError("merge needs the part files, in shard order")
    files = []
    try:
        for part in parts:
            if not Path(part).is_file():
                raise UserError(f"part not found: {part}")
        unrecorded = check_parts(parts)
        if unrecorded and expected_ids is None:
            raise UserError(
                f"{unrecorded[0]} does not record its shard (no {record_path(unrecorded[0]).name}"
                ", which predict --shard I/N --out writes): give --fasta to check every row "
                "against the input"
            )
        for part in parts:
            files.append(Path(part).open(encoding="utf-8", newline="\n"))
        return _interleave(parts, files, handle, expected_ids)
    except UnicodeDecodeError as error:
        raise UserError(f"a part is not a text file ({error.reason})") from None
    finally:
        for opened in files:
            opened.close()


def _row_id(line: str, delimiter: str | None) -> str | None:
    try:
        if delimiter is None:
            return str(json.loads(line)["id"])
        return next(csv.reader([line], delimiter=delimiter))[0]
    except (ValueError, KeyError, TypeError, IndexError, StopIteration):
        return None


def _interleave(
    parts: Sequence[Path], files: list[IO[str]], handle: IO[str], expected_ids: Iterable[str] | None
) -> int:
    firsts = [f.readline() for f in files]
    tabular = [bool(line) and not line.startswith("{") for line in firsts]
    delimiter = None
    if any(tabular):
        if len(set(firsts)) != 1:
            raise UserError("the parts' header lines differ: they are not parts of one run")
        delimiter = "\t" if "\t" in firsts[0] else ","
    # Rows per part, counted first so that nothing is written when the parts do not fit.
    counts = [
        sum(1 for _ in f) + (0 if tabular[r] or not firsts[r] else 1) for r, f in enumerate(files)
    ]
    # Round-robin parts of one input differ by at most one row, the earlier parts holding more.
    if any(a < b for a, b in zip(counts, counts[1:])) or counts[0] - counts[-1] > 1:
        shown = ", ".join(f"{p}: {c}" for p, c in zip(parts, counts))
        raise UserError(f"the parts are not the shards 1..N of one input, in order (rows: {shown})")
    for r, f in enumerate(files):
        f.seek(0)
        if tabular[r]:
            f.readline()
    if any(tabular):
        handle.write(firsts[0])
    expected = iter(expected_ids) if expected_ids is not None else None
    for _ in range(counts[0]):
        for r, f in enumerate(files):
            line = f.readline()
            if not line:
                continue
            if expected is not None:
                want, got = next(expected, None), _row_id(line, delimiter)
                # A tsv or csv id may carry the ' that keeps a spreadsheet from running it.
                if want != got and (want is None or got != spreadsheet_text(want)):
                    raise UserError(
                        f"{parts[r]} has {got!r} where the input has {want!r}: "
                        f"a part is missing, out of order or from another input"
                    )
            handle.write(line if line.endswith("\n") else line + "\n")
    if expected is not None and (extra := next(expected, None)) is not None:
        raise UserError(
            f"the input goes on ({extra!r}) past the parts' last row: a part is missing"
        )
    return sum(counts)
