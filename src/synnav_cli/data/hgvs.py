"""Protein variants in HGVS notation: parsed, checked against their reference, applied.

The subset read is what variant tables and VEP/SnpEff ``HGVSp`` fields hold, with three-letter
or one-letter residues: substitutions (``p.Arg123Trp``, ``p.R123W``), no change
(``p.Arg123=``), nonsense (``p.Arg123Ter``, ``p.R123*``), deletions (``p.Gly12del``,
``p.Gly12_Lys15del``), duplications (``...dup``), insertions (``p.Lys2_Met3insGlnSer``) and
deletion-insertions (``p.Cys28delinsTrpVal``), one or several changes on one protein
(``p.[Arg123Trp;Gly125Ser]``), optionally in parentheses (predicted, ``p.(Arg123Trp)``) and
behind an accession (``NP_000537.3:p.Arg175His``). Frameshifts, extensions and unknown effects
(``p.?``, ``p.Met1?``) are refused: the notation does not give the residues they make.

Written here rather than taken from a library: the biocommons ``hgvs`` package parses this and
far more but pulls a database stack, and ``mavehgvs`` reads three-letter codes only; the
subset above is a page of regular expressions.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from synnav_cli.errors import UserError, quoted

THREE_LETTER = {
    "Ala": "A", "Arg": "R", "Asn": "N", "Asp": "D", "Cys": "C", "Gln": "Q", "Glu": "E",
    "Gly": "G", "His": "H", "Ile": "I", "Leu": "L", "Lys": "K", "Met": "M", "Phe": "F",
    "Pro": "P", "Ser": "S", "Thr": "T", "Trp": "W", "Tyr": "Y", "Val": "V", "Sec": "U",
    "Pyl": "O", "Ter": "*",
}  # fmt: skip
ONE_LETTER = {one: three for three, one in THREE_LETTER.items()}
STOP = "*"
# A residue, three-letter first: "Ala" must not read as "A" followed by "la".
_RESIDUE = "(?:" + "|".join(THREE_LETTER) + "|[" + "".join(ONE_LETTER).replace("*", r"\*") + "])"
_RESIDUES = f"(?:{_RESIDUE})+"
_SITE = rf"({_RESIDUE})([1-9][0-9]{{0,5}})"
_RANGE = rf"{_SITE}(?:_{_SITE})?"
_FORMS = [
    ("substitution", re.compile(rf"{_SITE}({_RESIDUE}|=)")),
    ("delins", re.compile(rf"{_RANGE}delins({_RESIDUES})")),
    ("deletion", re.compile(rf"{_RANGE}del")),
    ("duplication", re.compile(rf"{_RANGE}dup")),
    ("insertion", re.compile(rf"{_SITE}_{_SITE}ins({_RESIDUES})")),
]
# Accessions are letters, digits and ._- (NP_000537.3, ENSP00000269305.4, P04637).
_ACCESSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Changes per variant: far more than any haplotype of interest, bounded for hostile input.
MAX_CHANGES = 1000


@dataclass(frozen=True)
class Change:
    """One change, positions 1-based on the reference: residues ``start``..``end`` (both named
    in the notation, ``end_residue`` for a range) become ``inserted``. An insertion has
    ``start``, ``end`` the residues either side and replaces nothing."""

    kind: str  # substitution | synonymous | nonsense | deletion | duplication | insertion | delins
    start: int
    start_residue: str
    end: int
    end_residue: str
    inserted: str = ""

    @property
    def span(self) -> tuple[int, int]:
        """The 0-based half-open stretch of the reference replaced (empty for an insertion)."""
        if self.kind == "insertion":
            return self.start, self.start
        return self.start - 1, self.end


def _residues(text: str) -> str:
    """``GlnSerTer`` or ``QS*`` as one-letter codes."""
    return "".join(THREE_LETTER.get(t, t) for t in re.findall(_RESIDUE, text))


def _residue(code: str) -> str:
    return THREE_LETTER.get(code, code)


def parse_change(text: str) -> Change:
    """One change without ``p.``, e.g. ``Arg123Trp``; a malformed one raises in one line."""
    for kind, pattern in _FORMS:
        match = pattern.fullmatch(text)
        if match is None:
            continue
        groups = match.groups()
        start_residue, start = _residue(groups[0]), int(groups[1])
        if kind == "substitution":
            alt = groups[2]
            if alt == "=":
                return Change("synonymous", start, start_residue, start, start_residue)
            alt = _residue(alt)
            if alt == start_residue:  # p.R123R: written as a substitution, changes nothing
                return Change("synonymous", start, start_residue, start, start_residue)
            kind = "nonsense" if alt == STOP else kind
            return Change(kind, start, start_residue, start, start_residue, alt)
        if kind == "insertion":
            end_residue, end = _residue(groups[2]), int(groups[3])
            if end != start + 1:
                raise UserError(
                    f"{text}: an insertion names the two neighbouring residues it goes between "
                    f"({start} and {start + 1}, not {end})"
                )
            return Change(kind, start, start_residue, end, end_residue, _residues(groups[4]))
        end_residue = _residue(groups[2]) if groups[2] else start_residue
        end = int(groups[3]) if groups[3] else start
        if end <= start and groups[3]:
            raise UserError(f"{text}: a range runs from a lower to a higher position")
        inserted = _residues(groups[4]) if kind == "delins" else ""
        return Change(kind, start, start_residue, end, end_residue, inserted)
    raise UserError(f"{quoted(text)} is not a protein change synnav reads{_why(text)}")


def _why(text: str) -> str:
    """What is wrong with a change no form matched, when it is a known kind synnav refuses."""
    if "fs" in text:
        return " (a frameshift: the notation does not give the residues after the shift)"
    if "ext" in text:
        return " (an extension: the notation does not give the residues added)"
    if "?" in text or text == "0":
        return " (an unknown effect)"
    return (
        " (expected e.g. Arg123Trp, R123W, Arg123=, Arg123Ter, Gly12del, Gly12_Lys15del, "
        "Gly12dup, Lys2_Met3insGln, Cys28delinsTrpVal)"
    )


def parse_hgvs_protein(text: str) -> tuple[str | None, list[Change]]:
    """``[ACCESSION:]p.CHANGE``, ``p.(CHANGE)`` or ``p.[CHANGE;CHANGE...]``: the accession (None
    when absent) and the changes; a malformed variant raises one line."""
    accession, _, notation = text.rpartition(":")
    if accession and not _ACCESSION.fullmatch(accession):
        raise UserError(f"{quoted(text)}: {quoted(accession)} is not an accession")
    if not notation.startswith("p."):
        raise UserError(f"{quoted(text)} is not a protein variant (expected p., e.g. p.Arg123Trp)")
    body = notation[2:]
    if body.startswith("(") and body.endswith(")"):  # predicted, not observed: same change
        body = body[1:-1]
    if body.startswith("[") and body.endswith("]"):
        parts = body[1:-1].split(";")
        if "];[" in body or not all(parts):
            raise UserError(f"{quoted(text)}: give one protein's changes as p.[A;B]")
    elif body == "=":
        return accession or None, []  # the whole protein unchanged
    else:
        parts = [body]
    if len(parts) > MAX_CHANGES:
        raise UserError(f"{quoted(text)} holds more than {MAX_CHANGES} changes")
    changes = []
    for part in parts:
        try:
            changes.append(parse_change(part.strip().removeprefix("(").removesuffix(")")))
        except UserError as error:
            raise UserError(f"{quoted(text)}: {error}") from None
    return accession or None, changes


def apply_changes(reference: str, changes: list[Change], name: str) -> str:
    """The variant protein: ``changes`` applied to ``reference`` after every residue they name
    is checked against it, cut at the first stop. A mismatch, a position past the end or two
    changes that overlap raise one line naming the first."""
    for change in changes:
        for position, residue in (
            (change.start, change.start_residue),
            (change.end, change.end_residue),
        ):
            if residue == STOP:
                raise UserError(
                    f"position {position} is named Ter (a stop): stop-loss extensions are not read"
                )
            if position > len(reference):
                raise UserError(
                    f"position {position} is past the end of {name} ({len(reference)} residues)"
                )
            found = reference[position - 1]
            if found != residue:
                raise UserError(
                    f"residue {position} of {name} is {ONE_LETTER.get(found, found)} ({found}), "
                    f"not {ONE_LETTER.get(residue, residue)} ({residue})"
                )
    ordered = sorted(changes, key=lambda c: c.span, reverse=True)
    for later, earlier in itertools.pairwise(ordered):
        (lo, hi), (lo2, hi2) = later.span, earlier.span
        if lo < hi2 or (lo == lo2 and hi == hi2):
            raise UserError("two changes overlap; give them as one (delins)")
    sequence = reference
    for change in ordered:  # from the C-terminus back, so earlier positions stay where they are
        lo, hi = change.span
        if change.kind == "synonymous":
            continue
        if change.kind == "duplication":
            replacement = reference[lo:hi] * 2
        elif change.kind in ("deletion",):
            replacement = ""
        else:
            replacement = change.inserted
        sequence = sequence[:lo] + replacement + sequence[hi:]
    return sequence.split(STOP, 1)[0]  # a stop ends the protein
