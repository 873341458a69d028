"""Reading FASTA for prediction: validated records, one at a time, so memory stays flat.

A record's identifier is the header up to its first space; identifiers must be unique and free of
control characters, and sequences hold amino-acid codes only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from Bio.SeqIO.FastaIO import SimpleFastaParser

from synnav_cli.data.compressed import open_text
from synnav_cli.errors import UserError, quoted

# The 20 standard residues plus the IUPAC ambiguity and rare codes protein language models know:
# X (any), B (D/N), Z (E/Q), J (I/L), U (selenocysteine), O (pyrrolysine).
AMINO_ACIDS = frozenset("ACDEFGHIKLMNPQRSTVWYXBZJUO")


@dataclass(frozen=True)
class FastaRecord:
    id: str
    description: str
    sequence: str


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


def _open_text(source: str | Path) -> IO[str]:
    check_input(source)
    # Plain, gzip, bzip2 or xz (by magic bytes); utf-8-sig: files saved by Windows editors start
    # with a byte-order mark, and it is not content.
    return open_text(source)


def read_fasta(source: str | Path | IO[str]) -> Iterator[FastaRecord]:
    """Yield validated records one at a time, so memory stays flat for any file size.

    ``source`` is a path, ``"-"`` for standard input (either may be gzip, bzip2 or xz), or an
    open text handle.
    """
    handle = source if hasattr(source, "read") else _open_text(source)  # type: ignore[arg-type]
    label = "standard input" if str(source) == "-" else str(source)
    try:
        yield from _parse_fasta(handle, label)
    except UnicodeDecodeError as error:
        raise UserError(f"{label} is not a text file ({error.reason})") from None
    finally:
        if handle is not source:
            handle.close()  # never standard input itself: see compressed.open_text


def _parse_fasta(handle: IO[str], label: str) -> Iterator[FastaRecord]:
    lines = iter(handle)
    first = next((line for line in lines if line.strip()), None)
    if first is not None:
        first = first.removeprefix("\ufeff")  # a byte-order mark on standard input
    if first is None:
        raise UserError(f"{label} is empty: expected FASTA records")
    if not first.startswith(">"):
        raise UserError(f"{label} is not FASTA: the first line does not start with '>'")
    seen: set[str] = set()
    for title, raw in SimpleFastaParser(itertools.chain([first], lines)):
        record_id, _, description = title.strip().partition(" ")
        if not record_id:
            raise UserError(f"{label} has a record with an empty header")
        if any(ord(c) < 32 or ord(c) == 127 for c in record_id):
            # A NUL, tab or escape sequence would end up in the output table (and a terminal).
            raise UserError(
                f"the identifier {quoted(record_id)} in {label} contains control characters"
            )
        if record_id in seen:
            raise UserError(f"duplicate identifier {quoted(record_id)} in {label}")
        seen.add(record_id)
        yield FastaRecord(record_id, description.strip(), normalise_sequence(raw, record_id))
