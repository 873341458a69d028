"""The one load path: model name or directory -> backbone -> weights on a device -> scorer.

``synnav predict`` (with ``--compare`` and ``--explain``), ``synnav evaluate`` and the
benchmarks all load a model here, so the backbone is looked up once, the batch budget comes from
that backbone's memory model, and a model's length limit and thresholds are read in one place.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from synnav_cli import console
from synnav_cli.backbones.base import Backbone
from synnav_cli.calibration import Calibration
from synnav_cli.data.dataset import column_name
from synnav_cli.errors import UserError
from synnav_cli.model import LocalizationModel
from synnav_cli.modeldir import ModelInfo, load_model, resolve_model
from synnav_cli.plugins import get_backbone
from synnav_cli.runtime import distributed, hardware, threads
from synnav_cli.scoring.score import Runtime


@dataclass
class LoadedModel:
    info: ModelInfo
    backbone: Backbone
    model: LocalizationModel
    runtime: Runtime
    max_length: int  # residues scored per protein: the model's and the backbone's limit
    thresholds: list[float]  # on the raw scores, where calls are made (see calibration.py)
    calibration: Calibration | None = None
    # The thresholds as the user sees them: on the calibrated scale where a label is calibrated.
    shown_thresholds: list[float] | None = None


def load_for_scoring(
    model_name: str | None,
    *,
    threshold_values: Iterable[str] = (),
    device: str = "auto",
    max_tokens: int | None = None,
    offline: bool = False,
    precision: str = "auto",
) -> LoadedModel:
    """Find a model by name or directory (None: the default set with `synnav models default`,
    else the bundled one), say which on stderr, and load it with :func:`open_model`."""
    info, how = resolve_model(model_name, offline=offline)
    if how == "bundled":
        console.info(
            f"Using the bundled model ({info.meta.get('description', info.meta['backbone'])}); "
            "train an ESM C model with `synnav train` for better accuracy."
        )
    elif how == "default":
        console.info(f"Using the default model {info.name} (set with `synnav models default`).")
    return open_model(
        info,
        threshold_values=threshold_values,
        device=device,
        max_tokens=max_tokens,
        offline=offline,
        precision=precision,
    )


def open_model(
    info: ModelInfo,
    *,
    threshold_values: Iterable[str] = (),
    device: str = "auto",
    max_tokens: int | None = None,
    offline: bool = False,
    precision: str = "auto",
) -> LoadedModel:
    """Load the model ``info`` describes onto ``device`` with a scoring budget.

    Arguments:
        info: the model directory's metadata (see ``modeldir.resolve_model``).
        threshold_values: overrides of the model's thresholds (``0.4`` or ``LABEL=0.4``).
        device: auto, cpu, cuda, cuda:N or mps (under torchrun, this rank's GPU).
        max_tokens: padded tokens per batch; None derives it from the backbone and the device.
        offline: never download weights.
        precision: auto, fp32, bf16 or fp16 (see ``hardware.scoring_precision``).
    """
    backbone = _backbone_of(info)
    calibration = info.calibration
    thresholds, shown = calibrated_thresholds(
        threshold_values, info.label_names, info.thresholds, calibration
    )
    limit = min(
        int(info.meta.get("config", {}).get("max_length", backbone.max_length)), backbone.max_length
    )
    runtime = scoring_runtime(backbone, device, limit, max_tokens, precision)
    torch_device = runtime.device
    threads.fit_to_backbone(backbone, torch_device)
    model = load_model(info, backbone, torch_device, offline=offline)
    if runtime.weights_cast:
        cast_encoder(model.encoder, runtime)
    for j in untrained_labels(model):
        # A label the model never saw a value of is never predicted, whatever --threshold says.
        thresholds[j] = shown[j] = math.inf
    return LoadedModel(info, backbone, model, runtime, limit, thresholds, calibration, shown)


def calibrated_thresholds(
    values: Iterable[str],
    label_names: list[str],
    defaults: list[float],
    calibration: Calibration | None,
) -> tuple[list[float], list[float]]:
    """Thresholds on the raw scores (where calls are made) and as shown to the user.

    The model's own thresholds are raw scores, so its calls are the same with a calibration as
    without. A ``--threshold`` value is a probability as the output shows it: on a calibrated
    label it becomes the smallest raw score whose calibrated probability reaches it.
    """
    given = parse_thresholds(values, label_names, [math.nan] * len(label_names))
    raw, shown = [], []
    for j, value in enumerate(given):
        mapping = calibration.maps[j] if calibration is not None else None
        if math.isnan(value):
            raw.append(defaults[j])
            shown.append(calibration.shown_threshold(j, defaults[j]) if mapping else defaults[j])
        else:
            raw.append(mapping.raw_threshold(value) if mapping else value)
            shown.append(value)
    return raw, shown


def scoring_runtime(
    backbone: Backbone, device: str, limit: int, max_tokens: int | None, precision: str = "auto"
) -> Runtime:
    """Device, precision (``precision`` as asked, resolved for the device) and the batch budget
    the backbone's memory model allows there (at least one protein of ``limit`` residues);
    ``max_tokens`` overrides the budget."""
    torch_device = distributed.pick_device(device)
    precision = hardware.scoring_precision(torch_device, precision)
    budget = hardware.plan_budget(
        torch_device,
        hardware.memory_model(backbone),
        training=False,
        precision=precision,
        min_tokens=backbone.tokens(limit),
        requested=max_tokens,
    )
    if max_tokens is None:
        hardware.report_budget("Scoring", budget)
    console.detail(
        f"device {torch_device}, precision {precision}, {budget.max_tokens} tokens a batch"
    )
    # On CPU bf16 runs on bf16 weights, not under autocast: autocast recasts every weight on
    # every batch; cast weights measured 1.01-1.28x faster at 1,024 tokens for ESM2-8M and ESM C
    # 300M (docs/benchmarks.md, "Reduced precision on CPU").
    cast = torch_device.type == "cpu" and precision == "bf16"
    return Runtime(torch_device, precision, budget.max_tokens, weights_cast=cast)


def cast_encoder(encoder: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Put ``encoder``'s weights in the runtime's precision when it runs on cast weights (CPU
    bf16); the pooling and the head stay fp32. Returns ``encoder``."""
    if runtime.weights_cast:
        encoder.to(torch.bfloat16)
    return encoder


def _backbone_of(info: ModelInfo) -> Backbone:
    try:
        return get_backbone(info.meta["backbone"])
    except UserError:
        raise UserError(
            f"model {info.name} needs backbone {info.meta['backbone']!r}, which no installed "
            "plugin provides: install the plugin distribution that provides it "
            "(`synnav backbones` lists what is installed)"
        ) from None


def untrained_labels(model: LocalizationModel | None) -> list[int]:
    """Labels whose head row is all zeros: training had no known value of them (see
    ``train.finish.blank_labels``), so the model gives every protein 0.5 for them."""
    if model is None:
        return []
    weight, bias = model.head.linear.weight, model.head.linear.bias
    return [j for j in range(weight.shape[0]) if not weight[j].any() and not bias[j].any()]


def parse_thresholds(
    values: Iterable[str], label_names: list[str], defaults: list[float]
) -> list[float]:
    """``0.4`` sets every label; ``ER=0.3`` sets one. Later values win. A label may be spelled as
    in the output columns (``excitatory_synapse``) or with its space."""
    thresholds = list(defaults)
    lowered = {column_name(name).lower(): j for j, name in enumerate(label_names)}
    for value in values:
        name, sep, number = value.rpartition("=")
        try:
            threshold = float(number)
        except ValueError:
            raise UserError(f"--threshold {value!r}: expected a number or LABEL=NUMBER") from None
        if not 0.0 <= threshold <= 1.0:
            raise UserError(f"--threshold {value!r}: thresholds lie between 0 and 1")
        if not sep:
            thresholds = [threshold] * len(label_names)
            continue
        key = column_name(name).lower()
        if key not in lowered:
            raise UserError(
                f"--threshold {value!r}: unknown label; labels: "
                f"{', '.join(column_name(n) for n in label_names)}"
            )
        thresholds[lowered[key]] = threshold
    return thresholds
