"""``synnav variants --explain``: how attributions change around a variant's site.

For each scored variant with a change, the label that moved most is explained in the reference
and in the variant (integrated gradients, :func:`explain.attribute`), and the two tracks are
lined up residue by residue through the changes: residues before, between and after the changes
pair with their counterparts; deleted residues have no variant side, inserted ones no reference
side. One TSV per variant holds the stretch from ``WINDOW`` residues before the first change to
``WINDOW`` after the last.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from synnav_cli import console
from synnav_cli.data.dataset import column_name
from synnav_cli.data.hgvs import Change
from synnav_cli.data.variants import variant_sequence
from synnav_cli.files import make_real_folder, replace_atomically
from synnav_cli.predict.explain import DEFAULT_STEPS, attribute, file_stem
from synnav_cli.predict.variant_rows import VariantRow, largest_change
from synnav_cli.predict.writer import spreadsheet_text
from synnav_cli.scoring.load import LoadedModel

WINDOW = 15  # residues either side of the changed stretch


def align(reference_length: int, variant_length: int, changes: list[Change]) -> list[tuple]:
    """(reference index, variant index) pairs, 0-based, through ``changes``; None on the side a
    residue lacks. A stop ends the variant: reference residues past it pair with nothing."""
    pairs: list[tuple[int | None, int | None]] = []
    i = j = 0
    for change in sorted(changes, key=lambda c: c.span):
        lo, hi = change.span
        while i < lo:
            pairs.append((i, j))
            i, j = i + 1, j + 1
        if change.kind in ("substitution", "synonymous", "nonsense"):
            pairs.append((i, j))
            i, j = i + 1, j + 1
        elif change.kind == "duplication":
            for _ in range(2):  # the stretch, then its copy, each against the reference's
                pairs.extend((lo + k, j + k) for k in range(hi - lo))
                j += hi - lo
            i = hi
        else:  # deletion, insertion, delins
            pairs.extend((k, None) for k in range(lo, hi))
            pairs.extend((None, j + k) for k in range(len(change.inserted)))
            i, j = hi, j + len(change.inserted)
    while i < reference_length:
        pairs.append((i, j))
        i, j = i + 1, j + 1
    pairs = [(r, v if v is not None and v < variant_length else None) for r, v in pairs]
    return [(r, v) for r, v in pairs if (r, v) != (None, None)]  # an inserted stop: no residue


def _around(pairs: list[tuple], changes: list[Change]) -> list[tuple]:
    """The pairs from ``WINDOW`` residues before the first change to ``WINDOW`` after the last."""
    first = min(c.span[0] for c in changes)
    last = max(c.span[1] for c in changes)
    return [(r, v) for r, v in pairs if r is None or first - WINDOW <= r < last + WINDOW]


def explain_variants(
    loaded: LoadedModel,
    rows: Iterable[VariantRow],
    references: dict[str, str],
    out_dir: Path,
    *,
    steps: int = DEFAULT_STEPS,
) -> int:
    """Write ``<id>_<variant>.tsv`` into ``out_dir`` for each row with a change; returns how
    many. Columns: reference_position, reference_residue, variant_position, variant_residue,
    reference_<label>, variant_<label>, difference (variant - reference)."""
    make_real_folder(Path(out_dir))
    names = [column_name(n) for n in loaded.info.label_names]
    taken: set[str] = set()
    progress = console.Progress(None, "explain", unit="variants")
    count = 0
    for row in rows:
        change = largest_change(row.delta, loaded.thresholds)
        if change is None or change[1] is None or not row.variant.changes:
            continue  # not scored, or nothing moved: nothing to explain
        label = change[1]
        reference = references[row.variant.id][: loaded.max_length]
        whole = variant_sequence(row.variant, references)
        variant = whole[: loaded.max_length]
        before = attribute(loaded, reference, [label], steps=steps)[:, 0]
        after = attribute(loaded, variant, [label], steps=steps)[:, 0]
        full = references[row.variant.id]
        changes = row.variant.changes
        pairs = _around(align(len(full), len(whole), changes), changes)
        stem = file_stem(f"{row.variant.id}_{row.variant.notation}", taken)
        _write(out_dir / f"{stem}.tsv", names[label], pairs, full, whole,
               before, after)  # fmt: skip
        count += 1
        progress.advance(1)
    progress.close()
    console.info(f"Wrote attribution differences for {count} variants to {out_dir}.")
    return count


def _write(path, label, pairs, reference, variant, before, after) -> None:
    def value(values, index):
        return None if index is None or index >= len(values) else float(values[index])

    def write(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as handle:
            out = csv.writer(handle, delimiter="\t", lineterminator="\n")
            name = spreadsheet_text(label)
            out.writerow(["reference_position", "reference_residue", "variant_position",
                          "variant_residue", f"reference_{name}", f"variant_{name}", "difference"])  # fmt: skip
            for r, v in pairs:
                a, b = value(before, r), value(after, v)
                out.writerow(
                    [
                        "" if r is None else r + 1,
                        "" if r is None else reference[r],
                        "" if v is None else v + 1,
                        "" if v is None else variant[v],
                        "" if a is None else f"{a:.6g}",
                        "" if b is None else f"{b:.6g}",
                        "" if a is None or b is None else f"{b - a:+.6g}",
                    ]
                )

    replace_atomically(path, write)  # a link planted at the name is replaced, never followed
