"""Mutant versus wild type: how much a substitution moves each label's probability.

A record named ``X_mut`` or ``X_mut<anything>`` (``P12345_mut_R123W``) is a mutant of the record
named ``X`` in the same FASTA. Each mutant gets one row: per label, the wild type's and the
mutant's probabilities and the change, mutant minus wild type; then the labels predicted for the
mutant, gained and lost.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from synnav_cli import console
from synnav_cli.calibration import calibration_line
from synnav_cli.data.dataset import column_name
from synnav_cli.data.fasta import FastaRecord
from synnav_cli.errors import UserError
from synnav_cli.predict.writer import text_cells, threshold_line
from synnav_cli.scoring.load import LoadedModel

MUTANT_MARKER = "_mut"
FORMATS = ("tsv", "csv", "jsonl")


@dataclass
class Comparison:
    mutant: str
    wild_type: str
    delta: np.ndarray | None  # mutant - wild type per label; None when either was skipped
    predicted: list[str]  # labels predicted for the mutant
    gained: list[str]  # predicted for the mutant, not for the wild type
    lost: list[str]  # predicted for the wild type, not for the mutant
    # The probabilities the delta is the difference of; None for a record skipped as too long.
    wild_probabilities: np.ndarray | None = None
    mutant_probabilities: np.ndarray | None = None


def pair_mutants(ids: Iterable[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """``(mutant, wild type)`` pairs in input order, and the mutants whose wild type is absent.

    When a name contains ``_mut`` more than once, the longest wild-type name present wins, so
    ``A_mut1_mut2`` pairs with ``A_mut1`` when both are given.
    """
    ids = list(ids)
    present = set(ids)
    pairs, orphans = [], []
    for record_id in ids:
        cuts = [
            i for i in range(len(record_id)) if record_id.startswith(MUTANT_MARKER, i) and i > 0
        ]
        if not cuts:
            continue
        wild = next((record_id[:i] for i in reversed(cuts) if record_id[:i] in present), None)
        if wild is None:
            orphans.append(record_id)
        else:
            pairs.append((record_id, wild))
    return pairs, orphans


def compare_records(
    loaded: LoadedModel, records: Iterable[FastaRecord], *, long_policy: str = "truncate"
) -> list[Comparison]:
    """Score the mutants and their wild types among ``records`` and compare them.

    Records that are neither a mutant nor a wild type of one are not scored.

    Arguments:
        loaded: the model (see ``session.load_for_scoring``).
        records: FASTA records; held in memory, as pairing needs all names.
        long_policy: truncate, window or skip, as for ``synnav predict --long``.
    """
    from synnav_cli.predict.run import predict_records

    records = list(records)
    pairs, orphans = pair_mutants(r.id for r in records)
    for orphan in orphans:
        console.warn(
            f"{orphan}: no wild-type record {orphan.split(MUTANT_MARKER)[0]!r} in the input; "
            "not compared"
        )
    if not pairs:
        raise UserError(
            "--compare found no mutant/wild-type pairs: name mutants <wild type id>_mut..., "
            "e.g. P12345 and P12345_mut_R123W"
        )
    needed = {name for pair in pairs for name in pair}
    chosen = [r for r in records if r.id in needed]
    # Probabilities as predict writes them (calibrated where the model is), and the raw scores
    # that calls are made on, at the model's raw thresholds.
    scored, raw = {}, {}
    for p in predict_records(
        loaded.model,
        loaded.backbone,
        chosen,
        loaded.runtime,
        max_length=loaded.max_length,
        long_policy=long_policy,
        calibration=loaded.calibration,
    ):
        scored[p.id], raw[p.id] = p.probabilities, p.probabilities if p.scores is None else p.scores
    names = [column_name(n) for n in loaded.info.label_names]
    thresholds = np.asarray(loaded.thresholds)
    comparisons = []
    for mutant, wild in pairs:
        m, w = scored[mutant], scored[wild]
        m_raw, w_raw = raw[mutant], raw[wild]
        predicted = [] if m is None else [n for n, on in zip(names, m_raw >= thresholds) if on]
        wild_predicted = [] if w is None else [n for n, on in zip(names, w_raw >= thresholds) if on]
        delta = None if m is None or w is None else m - w
        comparisons.append(
            Comparison(
                mutant,
                wild,
                delta,
                predicted,
                [n for n in predicted if n not in wild_predicted] if delta is not None else [],
                [n for n in wild_predicted if n not in predicted] if delta is not None else [],
                w,
                m,
            )
        )
    return comparisons


def write_comparisons(
    comparisons: list[Comparison],
    handle: IO[str],
    fmt: str,
    label_names: list[str],
    *,
    raw_ids: bool = False,
) -> None:
    """``mutant, wild_type``, then ``wild_type_<label>, mutant_<label>, delta_<label>`` per
    label, then ``predicted, gained, lost``, as tsv, csv or jsonl (``wild_type``, ``mutant`` and
    ``delta`` objects keyed by label there).

    A probability is empty (null in jsonl) for a record skipped as too long, and so is the delta.
    Text cells are written as :func:`writer.text_cells` says for ``fmt`` and ``raw_ids``.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose {', '.join(FORMATS)}")
    if fmt == "jsonl":

        def by_label(values: np.ndarray | None) -> dict | None:
            if values is None:
                return None
            return {column_name(n): round(float(v), 4) for n, v in zip(label_names, values)}

        for c in comparisons:
            handle.write(
                json.dumps(
                    {
                        "mutant": c.mutant,
                        "wild_type": c.wild_type,
                        "wild_type_probabilities": by_label(c.wild_probabilities),
                        "mutant_probabilities": by_label(c.mutant_probabilities),
                        "delta": by_label(c.delta),
                        "predicted": c.predicted,
                        "gained": c.gained,
                        "lost": c.lost,
                    }
                )
                + "\n"
            )
        return
    writer = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    text = text_cells(fmt, raw_ids)
    writer.writerow(
        [
            "mutant",
            "wild_type",
            *(
                f"{kind}_{column_name(n)}"
                for n in label_names
                for kind in ("wild_type", "mutant", "delta")
            ),
            "predicted",
            "gained",
            "lost",
        ]
    )
    for c in comparisons:
        cells = [
            cell
            for k in range(len(label_names))
            for cell in (
                _cell(c.wild_probabilities, k, "{:.4f}"),
                _cell(c.mutant_probabilities, k, "{:.4f}"),
                _cell(c.delta, k, "{:+.4f}"),
            )
        ]
        writer.writerow(
            [
                text(c.mutant),
                text(c.wild_type),
                *cells,
                text(";".join(c.predicted)),
                text(";".join(c.gained)),
                text(";".join(c.lost)),
            ]
        )


def _cell(values: np.ndarray | None, k: int, pattern: str) -> str:
    return "" if values is None else pattern.format(values[k])


def run_comparison(
    loaded: LoadedModel,
    fasta: str | Path,
    *,
    fmt: str = "tsv",
    out: Path | None = None,
    long_policy: str = "truncate",
    raw_ids: bool = False,
    compression: str | None = None,
) -> int:
    """Compare the mutants in ``fasta`` with their wild types; write the table to ``out`` or stdout
    (compressed with ``compression``, gzip, bzip2 or xz, when given).

    Returns the number of mutants compared.
    """
    from synnav_cli.data.fasta import read_fasta
    from synnav_cli.files import output_handle

    shown = loaded.shown_thresholds or loaded.thresholds
    console.info(threshold_line(loaded.info.label_names, shown))
    console.info(calibration_line(loaded.calibration))
    comparisons = compare_records(loaded, read_fasta(fasta), long_policy=long_policy)
    with output_handle(out, inputs=[fasta], compression=compression) as handle:
        write_comparisons(comparisons, handle, fmt, loaded.info.label_names, raw_ids=raw_ids)
    return len(comparisons)
