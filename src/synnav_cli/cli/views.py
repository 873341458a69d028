"""Every table and JSON rendering the commands print: backbones, trained models, evaluations.

Model listings read ``synnav-model.json`` only; no weights are loaded, so listing is instant
even with many large models. Evaluations render as a table, JSON, TSV or Markdown, several
models side by side.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from synnav_cli.sharing.pull import describe_source

if TYPE_CHECKING:  # modeldir imports torch; listing and showing models need none of it
    from synnav_cli.modeldir import ModelInfo


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def backbone_rows(registry, default_id: str) -> list[dict]:
    """One dict per registered backbone, as `synnav backbones --json` prints them."""
    return [
        {
            "id": backbone_id,
            "aliases": list(registry.aliases[backbone_id]),
            "embedding_dim": backbone.embedding_dim,
            "max_length": backbone.max_length,
            "license": backbone.license,
            "weights": backbone.weights_repo,
            "cached": backbone.weights_cached(),
            "default": backbone_id == default_id,
            "description": backbone.description,
        }
        for backbone_id, backbone in registry.backbones.items()
    ]


def format_backbones(rows: list[dict]) -> str:
    headers = ["id", "dim", "max len", "weights cached", "license", "description"]
    table = [
        [
            r["id"] + (" (default)" if r["default"] else ""),
            str(r["embedding_dim"]),
            str(r["max_length"]),
            {True: "yes", False: "no", None: "not needed"}[r["cached"]],
            r["license"],
            r["description"],
        ]
        for r in rows
    ]
    return format_table(headers, table)


# Hash prefixes long enough to tell datasets apart at a glance; the full hash is in --json.
HASH_PREFIX = 12


def _mean_test(info: ModelInfo, metric: str) -> float | None:
    return info.meta.get("metrics", {}).get("test", {}).get("mean", {}).get(metric)


def model_summary(info: ModelInfo, default: Path | None = None) -> dict:
    """One model's identity and headline test metrics, as `synnav models list --json` prints it.

    Arguments:
        info: the model directory's metadata.
        default: the directory of the default model, to mark it.
    """
    data = info.meta.get("data", {})
    return {
        "name": info.name,
        "default": default is not None and info.path.resolve() == default,
        "path": str(info.path),
        "backbone": info.meta.get("backbone"),
        "data": data.get("path"),
        "data_sha256": data.get("sha256"),
        "split_sha256": data.get("split_sha256"),
        "test_mean_f1": _mean_test(info, "f1"),
        "test_mean_roc_auc": _mean_test(info, "roc_auc"),
        "created": info.meta.get("created"),
        "source": describe_source(info.path, bundled=info.name == "bundled"),
    }


def model_details(info: ModelInfo, default: Path | None = None) -> dict:
    """Everything meaningful about one model, as `synnav models show --json` prints it.

    The training history and the command line are left out of the table view (they are long)
    but kept here.

    Arguments:
        info: the model directory's metadata.
        default: the directory of the default model, to mark it (as `models list` does).
    """
    from synnav_cli.data.dataset import column_name

    meta = info.meta
    # Labels are spelled as predict's columns are (excitatory_synapse), here as everywhere synnav
    # prints or writes one, so that tables join on them; synnav-model.json keeps its own spelling.
    metrics = {
        split: {**values, "labels": _by_column(values["labels"])}
        if isinstance(values, dict) and isinstance(values.get("labels"), dict)
        else values
        for split, values in meta.get("metrics", {}).items()
    }
    counts = meta.get("data", {}).get("label_counts")
    return {
        **model_summary(info, default),
        "labels": [column_name(name) for name in info.label_names],
        "thresholds": _by_column(dict(zip(info.label_names, info.thresholds))),
        "threshold_metric": meta.get("threshold_metric"),
        # Per label, the map that calibrates its probabilities (none: shown as scored); None
        # for a model without a calibration.
        "calibration": None
        if info.calibration is None
        else {
            column_name(name): mapping.method if mapping else "none"
            for name, mapping in zip(info.label_names, info.calibration.maps)
        },
        "encoder_frozen": meta.get("encoder_frozen"),
        "best_epoch": meta.get("best_epoch"),
        "metrics": metrics,
        "proteins": meta.get("data", {}).get("proteins"),
        "label_counts": _by_column(counts) if isinstance(counts, dict) else counts,
        "pos_weight": meta.get("pos_weight"),
        "config": meta.get("config", {}),
        "trained_on": meta.get("trained_on"),
        "versions": meta.get("versions", {}),
        "format_version": meta.get("format_version"),
        "history": meta.get("history", []),
        "command": meta.get("command"),
    }


def _by_column(by_label: dict) -> dict:
    """``{label: value}`` keyed by the labels' output spelling (``excitatory_synapse``)."""
    from synnav_cli.data.dataset import column_name

    return {column_name(str(name)): value for name, value in by_label.items()}


def evaluation_by_column(result: dict, scores):
    """An evaluation and its scores with the labels spelled as predict's columns are, for the
    tables, JSON and figures ``evaluate`` prints (``evaluate_with_scores`` returns the model's)."""
    import dataclasses

    from synnav_cli.data.dataset import column_name

    renamed = {**result, "labels": _by_column(result["labels"])}
    if isinstance(result.get("calibrated"), list):
        renamed["calibrated"] = [column_name(str(name)) for name in result["calibrated"]]
    names = [column_name(name) for name in scores.label_names]
    return renamed, dataclasses.replace(scores, label_names=names)


def _number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _short(digest: str | None) -> str:
    return digest[:HASH_PREFIX] if digest else "n/a"


def _table(headers: list[str], rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    return [
        indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [headers, *rows]
    ]


def format_model_list(
    infos: list[ModelInfo], *, default: Path | None = None, as_json: bool = False
) -> str:
    """The models as a table (or a JSON list) in the order given; the default marked with *."""
    summaries = [model_summary(info, default) for info in infos]
    if as_json:
        return json.dumps(summaries, indent=2) + "\n"
    if not summaries:
        return "No trained models yet; train one with `synnav train`.\n"
    headers = [
        "name",
        "backbone",
        "data",
        "data sha256",
        "split sha256",
        "test F1",
        "test ROC-AUC",
        "created",
        "source",
    ]
    rows = [
        [
            s["name"] + (" *" if s["default"] else ""),
            s["backbone"] or "?",
            s["data"] or "?",
            _short(s["data_sha256"]),
            _short(s["split_sha256"]),
            _number(s["test_mean_f1"]),
            _number(s["test_mean_roc_auc"]),
            s["created"] or "?",
            s["source"],
        ]
        for s in summaries
    ]
    footer = "* the default (`synnav models default` changes it)"
    return "\n".join([*_table(headers, rows), footer]) + "\n"


def format_model_details(
    info: ModelInfo, *, default: Path | None = None, as_json: bool = False
) -> str:
    """One model in full: identity, data, thresholds, per-label test metrics, config, versions."""
    details = model_details(info, default)
    if as_json:
        return json.dumps(details, indent=2) + "\n"
    lines = [
        f"name:           {details['name']}" + (" (default)" if details["default"] else ""),
        f"path:           {details['path']}",
        f"source:         {details['source']}",
        f"backbone:       {details['backbone']}"
        + (" (encoder frozen)" if details["encoder_frozen"] else ""),
        f"created:        {details['created']}",
        f"data:           {details['data']}",
        f"data sha256:    {details['data_sha256']}",
        f"split sha256:   {details['split_sha256']}",
    ]
    if details["proteins"]:
        lines.append(
            "proteins:       " + ", ".join(f"{k} {v}" for k, v in details["proteins"].items())
        )
    if details["best_epoch"] is not None:
        lines.append(f"best epoch:     {details['best_epoch']}")
    calibration = details["calibration"]
    lines.append(
        "calibration:    "
        + (
            ", ".join(f"{k} {v}" for k, v in calibration.items()) + " (fitted on dev)"
            if calibration
            else "none: probabilities are the model's scores (`synnav calibrate` adds one)"
        )
    )
    lines.append("")
    test = details["metrics"].get("test", {})
    per_label = test.get("labels", {})
    lines.append(
        f"Thresholds (tuned on dev for {details['threshold_metric'] or 'f1'}, on the model's "
        "scores) and test metrics:"
    )
    headers = ["label", "threshold", "f1", "roc_auc", "pr_auc", "mcc", "support"]
    rows = []
    for label in details["labels"]:
        metrics = per_label.get(label, {})
        rows.append(
            [
                label,
                f"{details['thresholds'][label]:.3f}",
                *(_number(metrics.get(m)) for m in ("f1", "roc_auc", "pr_auc", "mcc", "support")),
            ]
        )
    if test.get("mean"):
        rows.append(
            [
                "mean",
                "",
                *(_number(test["mean"].get(m)) for m in ("f1", "roc_auc", "pr_auc", "mcc")),
                "",
            ]
        )
    lines += _table(headers, rows, indent="  ")
    if not per_label:
        lines.append("  (no test split: the metrics above are not available)")
    lines.append("")
    lines.append("Config:")
    lines += [f"  {key}: {value}" for key, value in details["config"].items()]
    if details["trained_on"]:
        lines.append(
            "Trained on:     " + ", ".join(f"{k} {v}" for k, v in details["trained_on"].items())
        )
    if details["versions"]:
        lines.append(
            "Versions:       " + ", ".join(f"{k} {v}" for k, v in details["versions"].items())
        )
    return "\n".join(lines) + "\n"


# --- evaluations ---------------------------------------------------------------------------------

# ece_raw: calibration error of the model's scores; ece: of the probabilities predict writes.
METRICS_SHOWN = ("f1", "roc_auc", "pr_auc", "mcc", "ece_raw", "ece", "support")


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
    if len({r.get("data") for r in results}) > 1:
        sizes = dict.fromkeys(f"{r['name']} {r['proteins']}" for r in results)
        header = f"{results[0]['split']} split, proteins: {', '.join(sizes)}\n"
    else:
        header = f"{results[0]['split']} split, {results[0]['proteins']} proteins\n"
    return header + "\n".join(lines) + "\n"
