"""The model card (``README.md``) a push writes: the Hub's YAML header, then what the model
directory knows about itself: labels, thresholds, metrics per split, data and split hashes,
training config, versions, files and how to use it."""

from __future__ import annotations

from synnav_cli.errors import UserError

# The Hub's licence identifiers for the licences backbone weights carry (Backbone.license).
_CAMBRIAN = "https://www.evolutionaryscale.ai/policies/cambrian-{}-license-agreement"
LICENCES = {
    "MIT": {"license": "mit"},
    "Cambrian Non-Commercial": {
        "license": "other",
        "license_name": "cambrian-non-commercial-license-agreement",
        "license_link": _CAMBRIAN.format("non-commercial"),
    },
    "Cambrian Open": {
        "license": "other",
        "license_name": "cambrian-open-license-agreement",
        "license_link": _CAMBRIAN.format("open"),
    },
}
TAGS = ["synnav", "protein", "biology", "subcellular-localization", "neuron"]
METRICS = ("f1", "roc_auc", "pr_auc", "mcc")


def card_header(meta: dict) -> dict:
    """The YAML header's fields: licence of the weights, library, tags, base model."""
    from synnav_cli.plugins import get_backbone

    try:
        backbone = get_backbone(meta["backbone"])
    except UserError:
        raise UserError(
            f"backbone {meta['backbone']!r} is not installed here, so the licence of the weights "
            "cannot be stated: push from where its plugin is installed"
        ) from None
    licence = LICENCES.get(backbone.license) or {
        "license": "other",
        "license_name": backbone.license.lower().replace(" ", "-"),
    }
    header = {**licence, "library_name": "synnav", "tags": [*TAGS, backbone.id]}
    if backbone.weights_repo:
        header["base_model"] = backbone.weights_repo
    return {**header, "_licence_text": backbone.license}


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def model_card(
    meta: dict, repo_id: str, files: dict[str, dict], name: str, revision: str | None = None
) -> str:
    """The full ``README.md`` for model ``name`` (its metadata ``meta``) pushed to ``repo_id``
    (branch ``revision``; None: main)."""
    ref = repo_id + (f"@{revision}" if revision not in (None, "main") else "")
    from huggingface_hub import ModelCardData

    header = card_header(meta)
    licence = header.pop("_licence_text")
    yaml = ModelCardData(**header).to_yaml()
    labels = list(meta["labels"])
    metrics = meta.get("metrics", {})
    data = meta.get("data", {})
    versions = meta.get("versions", {})
    frozen = "head only (encoder frozen)" if meta.get("encoder_frozen") else "encoder and head"
    base = header.get("base_model")
    encoder = (
        f" The encoder's weights come from `{base}`, under its licence, through synnav's cache."
        if base and meta.get("encoder_frozen")
        else ""
    )
    lines = [
        "---",
        yaml,
        "---",
        "",
        f"# {name}",
        "",
        (
            "A synnav model: it predicts where proteins "
            f"go in a neuron ({', '.join(labels)}) from their sequence. Backbone "
            f"`{meta['backbone']}`, fine-tuned: {frozen}."
        ),
        "",
        "## Use",
        "",
        "```",
        f"synnav predict proteins.fasta --model hf:{ref} > predictions.tsv",
        "```",
        "",
        (
            f"With synnav installed, the first use pulls the model (`synnav models pull {ref}` "
            f"does it ahead of time, for offline use).{encoder}"
        ),
        "",
        "## Labels and thresholds",
        "",
        f"Decision thresholds, tuned on dev (criterion: {meta.get('threshold_metric') or 'f1'}).",
        "",
        *_table(["label", "threshold"], [[label, meta["thresholds"][label]] for label in labels]),
        "",
        "## Metrics",
        "",
    ]
    splits = [s for s in ("train", "dev", "test") if isinstance(metrics.get(s), dict)]
    lines += _table(
        ["split", *(f"mean {m}" for m in METRICS)],
        [[s, *((metrics[s].get("mean") or {}).get(m) for m in METRICS)] for s in splits],
    )
    test = (metrics.get("test") or {}).get("labels") or {}
    if test:
        lines += ["", "Test split, per label:", ""]
        lines += _table(
            ["label", *METRICS, "support"],
            [[lb, *(test.get(lb, {}).get(m) for m in (*METRICS, "support"))] for lb in labels],
        )
    proteins = data.get("proteins") or {}
    lines += [
        "",
        "## Data",
        "",
        *_table(
            ["", ""],
            [
                ["dataset", data.get("path")],
                ["dataset sha256", data.get("sha256")],
                ["split sha256", data.get("split_sha256")],
                *([f"proteins ({k})", v] for k, v in proteins.items()),
            ],
        ),
        "",
        "## Training",
        "",
        *_table(["setting", "value"], [[k, v] for k, v in (meta.get("config") or {}).items()]),
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "",
        "## Files",
        "",
        *_table(
            ["file", "bytes", "sha256"], [[n, f["size"], f["sha256"]] for n, f in files.items()]
        ),
        "",
        "## Licence",
        "",
        f"These weights derive from `{meta['backbone']}` and carry its licence: {licence}.",
        "",
    ]
    return "\n".join(lines)
