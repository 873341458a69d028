"""Training options: defaults, the origin's config-file keys, and validation (once, here).

A config read back from a workspace (``run.json``) goes through the same checks as one typed on
the command line, so a hand-edited file cannot smuggle in a value the command line would refuse.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path

from synnav_cli import console
from synnav_cli.errors import UserError, quoted
from synnav_cli.metrics import THRESHOLD_METRICS
from synnav_cli.model import LOSS_PRESETS
from synnav_cli.plugins import DEFAULT_BACKBONE
from synnav_cli.runtime import hardware


@dataclass
class TrainConfig:
    """Training options. Defaults follow the origin's published configuration.

    Arguments:
        backbone: registered backbone id or alias.
        epochs: passes over the training split.
        learning_rate: AdamW peak learning rate (linear warm-up, cosine decay).
        batch_size: at most this many proteins per optimiser step.
        max_tokens: padded tokens per batch; None derives it from the device's memory.
        precision: auto, fp32, bf16 or fp16 (the origin's ``fp16`` keeps working).
        loss: a2 (class-weighted, synapses up-weighted), balanced or unweighted.
        freeze: train the head only, on pooled embeddings cached on disk (see ``frozen``).
        gradient_checkpointing: recompute activations in the backward pass (True: every
            batch); None: only batches too large for memory without it (on GPUs).
        seed: seeds the split (when the data has none), initialisation and batch order.
        max_length: longer proteins are cut to their first ``max_length`` residues.
        weight_decay: AdamW weight decay.
        threshold_metric: f1 or mcc, maximised per label on dev to pick thresholds.
    """

    backbone: str = DEFAULT_BACKBONE
    epochs: int = 30
    learning_rate: float = 1e-4
    batch_size: int = 8
    max_tokens: int | None = None
    precision: str = "auto"
    loss: str = "a2"
    freeze: bool = False
    gradient_checkpointing: bool | None = None
    seed: int = 0
    max_length: int = 1800
    weight_decay: float = 0.01
    threshold_metric: str = "f1"

    def validate(self) -> None:
        # The origin writes precision as 16, true or "fp16"; the canonical name is checked below.
        self.precision = hardware.normalise_precision(self.precision)
        for spec in fields(self):
            value = getattr(self, spec.name)
            if not _has_type(value, str(spec.type)):
                raise UserError(
                    f"{spec.name.replace('_', ' ')} must be {_TYPE_WORDS[str(spec.type)]}, "
                    f"not {quoted(value)}"
                )
        if self.epochs < 1:
            raise UserError("epochs must be at least 1")
        if not self.learning_rate > 0:
            raise UserError("learning rate must be positive")
        if self.batch_size < 1:
            raise UserError("batch size must be at least 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UserError("max tokens must be at least 1")
        if self.max_length < 1:
            raise UserError("max length must be at least 1")
        self.loss = self.loss.lower()
        if self.loss not in LOSS_PRESETS:
            raise UserError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSS_PRESETS)}")
        if self.threshold_metric not in THRESHOLD_METRICS:
            raise UserError("threshold metric must be f1 or mcc")


_TYPE_WORDS = {
    "str": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "int | None": "a whole number or null",
    "bool | None": "true, false or null",
}


def _has_type(value: object, annotation: str) -> bool:
    if value is None:
        return annotation.endswith("| None")
    kind = annotation.removesuffix(" | None")
    if kind == "bool":
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, int)
    if kind == "float":
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, str)


def config_from_record(record: object, source: Path) -> TrainConfig:
    """A TrainConfig from a stored ``asdict`` record, refusing anything malformed."""
    names = {f.name for f in fields(TrainConfig)}
    if not isinstance(record, dict) or not set(record) <= names:
        raise UserError(f"{source} is damaged: its config is not a synnav training config")
    config = TrainConfig(**record)
    config.validate()
    return config


# The origin's config keys (and common spellings) mapped to TrainConfig fields.
CONFIG_KEYS = {
    "backbone": "backbone", "model": "backbone",
    "epochs": "epochs", "num_epochs": "epochs", "max_epochs": "epochs", "n_epochs": "epochs",
    "lr": "learning_rate", "learning_rate": "learning_rate",
    "batch_size": "batch_size", "train_batch_size": "batch_size",
    "max_tokens": "max_tokens",
    "precision": "precision", "mixed_precision": "precision",
    "loss": "loss", "loss_type": "loss",
    "freeze": "freeze", "freeze_encoder": "freeze",
    "gradient_checkpointing": "gradient_checkpointing", "grad_checkpoint": "gradient_checkpointing",
    "seed": "seed", "random_seed": "seed",
    "max_length": "max_length", "max_len": "max_length", "max_seq_len": "max_length",
    "max_protein_length": "max_length",
    "weight_decay": "weight_decay",
    "threshold_metric": "threshold_metric",
}  # fmt: skip


def read_config_file(path: Path) -> dict:
    """Options from a JSON config file, accepting the origin's key names."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise UserError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a JSON object")
    types = {f.name: f.type for f in fields(TrainConfig)}
    options = {}
    for key, value in raw.items():
        name = CONFIG_KEYS.get(key.lower())
        if name is None:
            console.warn(f"config key {key!r} is not used by synnav train; ignored")
            continue
        if name == "precision" and isinstance(value, bool):
            value = "fp16" if value else "fp32"
        if value is not None and "int" in str(types[name]) and not isinstance(value, int):
            raise UserError(f"config key {key!r} must be a whole number, got {value!r}")
        options[name] = value
    return options
