"""Variant tables: which protein, which changes, read line by line with their problems.

A line is ``ID  p.CHANGE [p.CHANGE ...]`` (tab- or space-separated; several changes on one line
are one variant, a haplotype) or ``ACCESSION:p.CHANGE``. Blank lines and lines starting with
``#`` are skipped, and so is a first line that is a header (``id  variant``). A VCF whose INFO
holds VEP (``CSQ``, with ``HGVSp``) or SnpEff (``ANN``, with ``HGVS.p``) annotations is read as
one variant per distinct protein change (:mod:`synnav_cli.data.vcf`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from synnav_cli.data.compressed import open_text
from synnav_cli.data.fasta import check_input
from synnav_cli.data.hgvs import Change, apply_changes, parse_hgvs_protein
from synnav_cli.errors import UserError, quoted
from synnav_cli.files import input_name

MAX_LINE_CHARS = 1 << 16  # no list of changes to one protein comes near
MAX_VARIANTS = 5_000_000  # held in memory: all are checked before any is scored
HEADER_WORDS = {"variant", "variants", "hgvsp", "hgvs", "hgvs.p", "change", "changes", "mutation"}


@dataclass
class Variant:
    """One row of output: a reference protein and the changes made to it."""

    line: int  # in the variants file, counting from 1 (a VCF line may give several variants)
    id: str  # the reference's FASTA identifier ("" when it could not be read)
    notation: str  # as given
    changes: list[Change] = field(default_factory=list)
    problem: str | None = None  # why it cannot be scored; set by reading or by the check
    number: int = 0  # among the file's variants, counting from 1: the key of its row


def read_variants(source: str | Path) -> list[Variant]:
    """Every variant in ``source`` (a table or a VCF, plain or compressed), in input order, with
    malformed lines kept and their problem set (never raised: ``--skip-invalid`` reports them)."""
    check_input(source)
    label = input_name(source)
    handle = open_text(source, label)
    try:
        first = handle.readline(MAX_LINE_CHARS + 1)
        if first.startswith("##fileformat=VCF"):
            from synnav_cli.data.vcf import read_vcf

            variants = [
                parse_line(number, fields)
                for number, fields in read_vcf(_lines(handle, label, first), label)
            ]
        else:
            variants = list(_read_table(_lines(handle, label, first), label))
    except UnicodeDecodeError as error:
        raise UserError(f"{label} is not a text file ({error.reason})") from None
    finally:
        handle.close()
    return numbered(variants, label)


def variants_from_lines(lines: Iterable[str], label: str = "the input") -> list[Variant]:
    """Variants from table lines given in memory (``"P04637  p.Arg175His"``), read as
    :func:`read_variants` reads a table's."""
    numbered_lines = ((n, str(line).rstrip("\r\n")) for n, line in enumerate(lines, 1))
    return numbered(list(_read_table(numbered_lines, label)), label)


def numbered(variants: list[Variant], label: str) -> list[Variant]:
    """``variants`` numbered 1, 2, ... (the keys of their rows); none at all is an error."""
    if not variants:
        raise UserError(f"{label} holds no variants (expected lines like: P04637  p.Arg175His)")
    for number, variant in enumerate(variants, 1):
        variant.number = number
    return variants


def _lines(handle, label: str, first: str) -> Iterator[tuple[int, str]]:
    """Numbered lines, each bounded, and a bounded count of them."""
    line, number = first, 1
    while line:
        if len(line.rstrip("\r\n")) > MAX_LINE_CHARS:
            raise UserError(
                f"line {number:,} of {label} is longer than {MAX_LINE_CHARS:,} characters"
            )
        if number > MAX_VARIANTS * 2:
            raise UserError(f"{label} has more than {MAX_VARIANTS * 2:,} lines; split it")
        yield number, line.rstrip("\r\n")
        line, number = handle.readline(MAX_LINE_CHARS + 1), number + 1


def _read_table(lines: Iterator[tuple[int, str]], label: str) -> Iterator[Variant]:
    count, seen_content = 0, False
    for number, text in lines:
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        fields = text.split()
        if not seen_content and len(fields) >= 2 and fields[1].lower() in HEADER_WORDS:
            seen_content = True
            continue  # a header line
        seen_content = True
        count += 1
        if count > MAX_VARIANTS:
            raise UserError(f"{label} holds more than {MAX_VARIANTS:,} variants; split it")
        yield parse_line(number, fields)


def parse_line(number: int, fields: list[str]) -> Variant:
    """A table line's fields as a variant; its problem set when malformed."""
    notation = " ".join(fields[1:]) if len(fields) > 1 else fields[0]
    if not all(f.isprintable() for f in fields):
        return Variant(number, "", quoted(notation), problem="holds control characters")
    record_id, given = (fields[0], fields[1:]) if len(fields) > 1 else ("", fields)
    changes: list[Change] = []
    try:
        for text in given:
            accession, parsed = parse_hgvs_protein(text)
            if accession and record_id and accession != record_id:
                raise UserError(f"{quoted(text)} names {accession}, not {record_id}")
            record_id = record_id or accession or ""
            changes.extend(parsed)
        if not record_id:
            raise UserError(
                f"{quoted(notation)} names no protein: give ID p.CHANGE, or ACCESSION:p.CHANGE"
            )
    except UserError as error:
        return Variant(number, record_id, notation, problem=str(error))
    return Variant(number, record_id, notation, changes)


def variant_sequence(variant: Variant, references: dict[str, str]) -> str:
    """The protein a checked variant makes. Made again when needed rather than kept: a table of
    a million variants of long proteins would otherwise hold gigabytes of sequences."""
    return apply_changes(references[variant.id], variant.changes, variant.id)
