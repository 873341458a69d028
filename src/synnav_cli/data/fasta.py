"""Reading FASTA for prediction: validated records, one at a time, so memory stays flat.

A record's identifier is the header up to its first space; identifiers must be unique and free of
control characters (C0, C1, line separators, bidirectional overrides: see :func:`_printable`),
and sequences hold amino-acid codes only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from Bio.SeqIO.FastaIO import SimpleFastaParser

from synnav_cli import console
from synnav_cli.data.compressed import open_text
from synnav_cli.errors import UserError, quoted
from synnav_cli.files import input_name

# The 20 standard residues plus the IUPAC ambiguity and rare codes protein language models know:
# X (any), B (D/N), Z (E/Q), J (I/L), U (selenocysteine), O (pyrrolysine).
AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZJUO")


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    sequence: str
    # Why the record cannot be scored; set only when invalid records are kept (``keep_invalid``).
    problem: str | None = None
    # The residues an invalid record holds as given (its ``sequence`` is left empty).
    given_length: int = 0

    @property
    def length(self) -> int:
        """Residues, for the output's length column: an invalid record's as it was given."""
        return len(self.sequence) if self.problem is None else self.given_length


# A record this long or longer made of these letters is DNA or RNA, not protein (A, C, G, T, U
# and N are also amino-acid codes, so a real protein with 90% of them is vanishingly rare).
NUCLEOTIDES = frozenset("ACGTUN")
NUCLEOTIDE_FRACTION = 0.9
NUCLEOTIDE_MIN_LENGTH = 12


# The characters one line, and one record's sequence lines together, may hold (line ends not
# counted). No protein comes near: titin, the longest known, has about 35,000 residues. The bound
# keeps memory flat whatever the input expands to, such as a few KB of bzip2 that expand to
# gigabytes without a newline (a decompression bomb).
MAX_LINE_CHARS = 1 << 25
MAX_RECORD_CHARS = 1 << 25


def looks_like_nucleotides(sequence: str) -> bool:
    if len(sequence) < NUCLEOTIDE_MIN_LENGTH:
        return False
    return sum(c in NUCLEOTIDES for c in sequence) >= NUCLEOTIDE_FRACTION * len(sequence)


def normalise_sequence(raw: str, name: str) -> str:
    """Upper-case, strip whitespace and one terminal stop codon; reject anything else."""
    sequence = "".join(raw.split()).upper()
    sequence = sequence.removesuffix("*")
    if not sequence:
        raise UserError(f"record {quoted(name)} has an empty sequence")
    bad = set(sequence) - AMINO_ACIDS
    if bad:
        shown = "".join(sorted(bad))
        raise UserError(
            f"record {quoted(name)} contains characters that are not amino-acid codes: "
            f"{quoted(shown)}"
        )
    return sequence


def check_input(source: str | Path) -> None:
    """Fail early, with the message reading would give, when ``source`` cannot be read."""
    if str(source) == "-":
        return
    path = Path(source)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if path.is_dir():
        raise UserError(f"expected a file, got a directory: {path}")


def _open_text(source: str | Path, label: str) -> IO[str]:
    check_input(source)
    # Plain, gzip, bzip2 or xz (by magic bytes); utf-8-sig: files saved by Windows editors start
    # with a byte-order mark, and it is not content.
    return open_text(source, label)


def read_fasta(
    source: str | Path | IO[str], *, keep_invalid: bool = False
) -> Iterator[FastaRecord]:
    """Yield validated records one at a time, so memory stays flat for any file size.

    ``source`` is a path, ``"-"`` for standard input (either may be gzip, bzip2 or xz), or an
    open text handle. An invalid record (bad characters, empty sequence or header, a repeated
    identifier) raises, or with ``keep_invalid`` is yielded with an empty sequence and its
    ``problem`` set. A file that is not FASTA at all raises either way.
    """
    label = input_name(source)
    handle = source if hasattr(source, "read") else _open_text(source, label)  # type: ignore[arg-type]
    try:
        yield from _parse_fasta(handle, label, keep_invalid=keep_invalid)
    except UnicodeDecodeError as error:
        raise UserError(f"{label} is not a text file ({error.reason})") from None
    finally:
        if handle is not source:
            handle.close()  # never standard input itself: see compressed.open_text


def _bounded_lines(handle: IO[str], label: str) -> Iterator[str]:
    """``handle``'s lines, refused in one line as soon as one line or one record grows past its
    bound: memory never holds more than that, whatever the input expands to."""
    records, size = 0, 0
    for number in itertools.count(1):
        line = handle.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        end = 2 if line.endswith("\r\n") else 1 if line.endswith(("\n", "\r")) else 0
        if len(line) - end > MAX_LINE_CHARS:
            raise UserError(
                f"line {number:,} of {label} is longer than {MAX_LINE_CHARS:,} characters; "
                f"no protein is this long (a genome, or a damaged or hostile file?)"
            )
        if line.startswith(">"):
            records, size = records + 1, 0
        else:
            size += len(line) - end
        if size > MAX_RECORD_CHARS:
            raise UserError(
                f"record {max(records, 1):,} of {label} is longer than {MAX_RECORD_CHARS:,} "
                f"characters; no protein is this long (a genome, or a damaged or hostile file?)"
            )
        yield line


def _parse_fasta(handle: IO[str], label: str, *, keep_invalid: bool) -> Iterator[FastaRecord]:
    lines = _bounded_lines(handle, label)
    first = next((line for line in lines if line.strip()), None)
    if first is not None:
        first = first.removeprefix("\ufeff")  # a byte-order mark on standard input
    if first is None:
        raise UserError(f"{label} is empty: expected FASTA records")
    if not first.startswith(">"):
        raise UserError(f"{label} is not FASTA: the first line does not start with '>'")
    entries = SimpleFastaParser(itertools.chain([first], lines))
    yield from checked_records(_split_titles(entries), label, keep_invalid=keep_invalid)


def _split_titles(entries: Iterable[tuple[str, str]]) -> Iterator[tuple[str, str, str]]:
    """``(title, raw)`` -> ``(identifier, description, raw)``: the identifier is the title up to
    its first space."""
    for title, raw in entries:
        record_id, _, description = title.strip().partition(" ")
        yield record_id, description, raw


def checked_records(
    entries: Iterable[tuple[str, str, str]], label: str, *, keep_invalid: bool = False
) -> Iterator[FastaRecord]:
    """Records of ``(identifier, description, raw sequence)`` entries, checked as FASTA records
    are: a FASTA file's, and the Python API's sequences given in memory (``label`` names them in
    messages). An invalid one raises, or with ``keep_invalid`` is yielded with its ``problem``.
    """
    seen: set[str] = set()
    for number, (record_id, description, raw) in enumerate(entries, 1):
        try:
            sequence = _check_record(record_id, raw, seen)
        except UserError as error:
            if not keep_invalid:
                raise UserError(f"record {number:,} of {label}: {error}") from None
            yield FastaRecord(
                record_id if _printable(record_id) else "",
                description.strip(),
                "",
                str(error),
                len("".join(raw.split()).removesuffix("*")),
            )
            continue
        seen.add(record_id)
        yield FastaRecord(record_id, description.strip(), sequence)


def _printable(record_id: str) -> bool:
    """No C0 or C1 control character (U+009B starts a terminal escape), line or paragraph
    separator (``str.splitlines()`` breaks a row at U+0085, U+2028, U+2029), bidirectional
    override or other invisible format character: what ``str.isprintable`` refuses, as for
    label names."""
    return record_id.isprintable()


def _check_record(record_id: str, raw: str, seen: set[str]) -> str:
    if not record_id:
        raise UserError("empty header")
    if not _printable(record_id):
        # A NUL, tab or escape sequence would end up in the output table (and a terminal).
        raise UserError(f"the identifier {quoted(record_id)} contains control characters")
    if record_id in seen:
        raise UserError(f"duplicate identifier {quoted(record_id)}")
    return normalise_sequence(raw, record_id)


@dataclass
class Validation:
    """What a pass over a whole FASTA found, before anything is scored."""

    records: int = 0
    invalid: int = 0
    nucleotide: int = 0
    examples: list[str] = field(default_factory=list)  # the first problems, with record numbers

    def problem_report(self, label: str) -> str:
        """One line: how many records are invalid, the first of them, and how many more."""
        more = self.invalid - len(self.examples)
        tail = f"; ... and {more:,} more" if more > 0 else ""
        return (
            f"{self.invalid:,} of {self.records:,} records in {label} are invalid, so nothing was "
            f"scored (--skip-invalid scores the rest): {'; '.join(self.examples)}{tail}"
        )

    def refusal(self, label: str, skip_invalid: bool) -> str | None:
        """Why the whole input is refused before anything is scored (invalid records without
        ``skip_invalid``, nothing but nucleotides), or None; warns of the invalid records that
        ``skip_invalid`` keeps. predict and embed ask it of a FASTA file
        (``predict.run.validate_input``) and the Python API of sequences in memory."""
        if self.invalid and not skip_invalid:
            return self.problem_report(label)
        if self.nucleotide and self.nucleotide == self.records - self.invalid:
            return (
                f"{label} holds nucleotide sequences (DNA or RNA), not proteins; "
                "translate them first"
            )
        if self.invalid:
            console.warn(
                f"{self.invalid:,} of {self.records:,} records are invalid; their "
                "rows say why in the status column"
            )
        return None


def validate_fasta(source: str | Path, *, examples: int = 5) -> Validation:
    """Check every record of ``source`` in one streaming pass (memory: the identifiers seen).

    Problems are counted, and the first ``examples`` are kept with their record numbers; a file
    that is not FASTA at all raises at once.
    """
    return validate_records(read_fasta(source, keep_invalid=True), examples=examples)


def validate_records(records: Iterable[FastaRecord], *, examples: int = 5) -> Validation:
    """:func:`validate_fasta` for records already read with ``keep_invalid``."""
    found = Validation()
    for number, record in enumerate(records, 1):
        found.records = number
        if record.problem is not None:
            found.invalid += 1
            if len(found.examples) < examples:
                found.examples.append(f"record {number:,}: {record.problem}")
        elif looks_like_nucleotides(record.sequence):
            found.nucleotide += 1
    return found
