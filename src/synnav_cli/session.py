"""A model loaded for scoring, plus the file handling that `predict --explain/--compare` share."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from synnav_cli import console, hardware
from synnav_cli.backbones.base import Backbone
from synnav_cli.files import check_output_file, temporary_file
from synnav_cli.inference import Runtime
from synnav_cli.model import LocalizationModel
from synnav_cli.modeldir import ModelInfo, load_model, resolve_model
from synnav_cli.plugins import get_backbone


@dataclass
class LoadedModel:
    info: ModelInfo
    backbone: Backbone
    model: LocalizationModel
    runtime: Runtime
    max_length: int  # residues scored per protein: the model's and the backbone's limit
    thresholds: list[float]


def load_for_scoring(
    model_name: str | None,
    *,
    threshold_values: Iterable[str] = (),
    device: str = "auto",
    max_tokens: int | None = None,
    offline: bool = False,
) -> LoadedModel:
    """Resolve a model the way `synnav predict` does and load it with a token budget.

    Arguments:
        model_name: model directory or name; None picks the newest trained model, else the
            bundled one.
        threshold_values: overrides of the model's thresholds (``0.4`` or ``LABEL=0.4``).
        device: auto, cpu, cuda, cuda:N or mps.
        max_tokens: padded tokens per batch; None derives it from the device.
        offline: never download weights.
    """
    from synnav_cli.predict import parse_thresholds

    info, how = resolve_model(model_name)
    if how == "latest":
        console.detail(f"Using the newest trained model {info.path}.")
    backbone = get_backbone(info.meta["backbone"])
    thresholds = parse_thresholds(threshold_values, info.label_names, info.thresholds)
    torch_device = hardware.pick_device(device)
    precision = hardware.resolve_precision(torch_device, "auto")
    limit = min(int(info.meta.get("config", {}).get("max_length", backbone.max_length)), backbone.max_length)
    budget = max_tokens or hardware.default_token_budget(
        torch_device, embedding_dim=backbone.embedding_dim, training=False
    )
    runtime = Runtime(torch_device, precision, max(budget, limit + 2))
    model = load_model(info, torch_device, offline=offline)
    return LoadedModel(info, backbone, model, runtime, limit, thresholds)


@contextmanager
def readable_twice(fasta: str) -> Iterator[str]:
    """A path to ``fasta`` that can be read more than once: standard input is spooled to a file."""
    if fasta != "-":
        yield fasta
        return
    fd, tmp = tempfile.mkstemp(prefix="synnav-stdin-", suffix=".fasta")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            shutil.copyfileobj(sys.stdin, handle)
        yield tmp
    finally:
        Path(tmp).unlink(missing_ok=True)


@contextmanager
def output_handle(out: Path | None, *, inputs: Iterable[str | Path] = ()) -> Iterator[IO[str]]:
    """stdout, or ``out`` written to a temporary sibling and renamed into place when complete.

    ``out`` must be a new name or a regular file, and none of ``inputs``.
    """
    if out is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    out = Path(out)
    check_output_file(out, inputs=inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(out.parent, prefix=f".{out.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            yield handle
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
