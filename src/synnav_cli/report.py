"""Evaluation results as a table, JSON, TSV or Markdown; several models side by side."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_SHOWN = ("f1", "roc_auc", "pr_auc", "mcc", "support")


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.3f}"


def _rows(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One row per label (then the mean); one column per metric per model."""
    names = [r.get("name") or Path(r["model"]).name for r in results]
    multi = len(results) > 1
    headers = ["label"]
    for name in names:
        headers += [f"{name} {m}" if multi else m for m in METRICS_SHOWN]
    labels = list(results[0]["labels"])
    rows = []
    for label in labels:
        row = [label]
        for result in results:
            metrics = result["labels"].get(label, {})
            row += [_cell(metrics.get(m)) for m in METRICS_SHOWN]
        rows.append(row)
    mean_row = ["mean"]
    for result in results:
        mean_row += [_cell(result["mean"].get(m)) if m != "support" else "" for m in METRICS_SHOWN]
    rows.append(mean_row)
    return headers, rows


def format_evaluation(results: list[dict], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(results[0] if len(results) == 1 else results, indent=2) + "\n"
    headers, rows = _rows(results)
    if fmt == "tsv":
        return "\n".join("\t".join(r) for r in [headers, *rows]) + "\n"
    if fmt == "markdown":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]]
    header = f"{results[0]['split']} split, {results[0]['proteins']} proteins\n"
    return header + "\n".join(lines) + "\n"
