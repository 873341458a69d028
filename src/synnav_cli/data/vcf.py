"""Protein variants from a VCF annotated by VEP (INFO ``CSQ``, field ``HGVSp``) or SnpEff (INFO
``ANN``, field ``HGVS.p``).

Each distinct (protein, change) among a file's annotations is one variant, in file order. VEP
writes the protein in the change (``ENSP00000269305.4:p.Arg175His``); SnpEff does not, so its
protein is the annotation's ``Feature_ID`` (a transcript), and the FASTA must use those ids.
Annotations without a protein change (intronic, synonymous at DNA level only) are skipped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import unquote

from synnav_cli.errors import UserError

# SnpEff's ANN fields, fixed by its specification (the header repeats them).
SNPEFF_FIELDS = [
    "Allele", "Annotation", "Annotation_Impact", "Gene_Name", "Gene_ID", "Feature_Type",
    "Feature_ID", "Transcript_BioType", "Rank", "HGVS.c", "HGVS.p",
]  # fmt: skip
_HEADER = re.compile(r"##INFO=<ID=(CSQ|ANN),")
_FORMAT = re.compile(r"Format:\s*([^\"]+)")  # VEP's field names, in its CSQ header


def read_vcf(lines: Iterator[tuple[int, str]], label: str) -> Iterator[tuple[int, list[str]]]:
    """Each distinct protein change as (line number, fields of a variant table line)."""
    fields: dict[str, list[str]] = {}
    seen: set[tuple[str, str]] = set()
    for number, text in lines:
        if text.startswith("##"):
            header = _HEADER.match(text)
            if header:
                names = _FORMAT.search(text)
                fields[header.group(1)] = (
                    [f.strip() for f in names.group(1).split("|")] if names else SNPEFF_FIELDS
                )
            continue
        if text.startswith("#") or not text.strip():
            continue
        if not fields:
            raise UserError(
                f"{label} is a VCF without VEP (CSQ) or SnpEff (ANN) annotations: annotate it "
                "with HGVSp first, or give a table of protein variants"
            )
        columns = text.split("\t")
        if len(columns) < 8:
            raise UserError(f"line {number:,} of {label} has {len(columns)} columns, not 8 or more")
        for key, value in (i.partition("=")[::2] for i in columns[7].split(";")):
            if key not in fields:
                continue
            names = fields[key] if key == "CSQ" else SNPEFF_FIELDS
            for entry in value.split(","):
                found = _protein_change(key, names, entry.split("|"))
                if found is None or found in seen:
                    continue
                seen.add(found)
                yield number, [found[0], found[1]] if found[0] else [found[1]]


def _protein_change(key: str, names: list[str], values: list[str]) -> tuple[str, str] | None:
    """(protein id, change) of one annotation; None when it has no protein change."""
    wanted = "HGVSp" if key == "CSQ" else "HGVS.p"
    if wanted not in names or names.index(wanted) >= len(values):
        return None
    change = unquote(values[names.index(wanted)])  # VEP writes p.Arg175= as p.Arg175%3D
    if not change:
        return None
    if key == "ANN" and len(values) > 6 and ":" not in change:
        return values[6], change
    return "", change
