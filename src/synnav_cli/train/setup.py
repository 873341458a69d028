"""Everything a run fixes before its first step: the workspace it holds, the data and its splits,
the backbone (looked up once), the device, the precision and the batch budget.

A run lives in ``<out>.partial/``: ``run.json`` records the configuration and the data (path and
hashes), a lock file keeps a second run out, checkpoints follow. The finished model goes to
``<out>``, next to the workspace, whatever the workspace's files say.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from synnav_cli import console, paths
from synnav_cli.backbones.base import Backbone
from synnav_cli.data.dataset import Dataset
from synnav_cli.errors import UserError
from synnav_cli.files import exclusive_lock, make_real_folder
from synnav_cli.model import positive_weights
from synnav_cli.plugins import get_backbone
from synnav_cli.runtime import distributed, hardware
from synnav_cli.train.config import TrainConfig

RUN_FILE = "run.json"
LOCK_FILE = "lock"
PARTIAL_SUFFIX = ".partial"
SPLITS = ("train", "dev", "test")


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict
    best_epoch: int
    history: list[dict] = field(default_factory=list)


@dataclass
class RunSetup:
    """One training run, fixed before the first step and read by every later stage."""

    workspace: Path  # <out>.partial: run.json, lock, checkpoints
    out: Path  # the model directory written at the end
    record: dict  # run.json: data path and hashes, whether --force was given
    config: TrainConfig
    dataset: Dataset
    parts: dict[str, Dataset]  # train, dev, test; sequences already cut to max_length
    backbone: Backbone
    device: torch.device
    precision: str
    budget: hardware.Budget
    pos_weight: np.ndarray  # per label, from the training split


def default_out_dir(backbone_id: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return paths.models_dir() / f"{backbone_id}-{stamp}"


def workspace_of(out: Path) -> Path:
    return out.with_name(out.name + PARTIAL_SUFFIX)


def out_of(workspace: Path) -> Path:
    return workspace.with_name(workspace.name.removesuffix(PARTIAL_SUFFIX))


def read_run(workspace: Path) -> dict:
    """``run.json``, checked field by field: it may have been edited."""
    path = workspace / RUN_FILE
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise UserError(
            f"{path} is damaged ({type(error).__name__}); delete {workspace} to start over"
        ) from None
    expected = {"config": dict, "data": str, "data_sha256": str, "split_sha256": str, "force": bool}
    if not isinstance(run, dict) or any(not isinstance(run.get(k), t) for k, t in expected.items()):
        raise UserError(
            f"{path} is damaged or from an older synnav; delete {workspace} to start over"
        )
    return run


@contextmanager
def holding(workspace: Path) -> Iterator[None]:
    """The workspace, created if needed and locked by this run (rank 0 holds the lock for all).

    A link at the workspace's name is refused, never followed: the run would write its
    checkpoints into the link's target and remove a ``lock`` file there when done.
    """
    refusal = None
    with ExitStack() as stack:
        if distributed.is_main():
            try:
                make_real_folder(workspace)
                stack.enter_context(
                    exclusive_lock(workspace / LOCK_FILE, f"the training workspace {workspace}")
                )
            except UserError as error:
                refusal = str(error)
        refusal = distributed.broadcast(refusal)
        if refusal is not None:
            raise UserError(refusal)
        yield


def prepare(
    workspace: Path, record: dict, config: TrainConfig, dataset: Dataset, *, device: str
) -> RunSetup:
    """Split the data, cut long proteins, pick the device, precision and batch budget."""
    backbone = get_backbone(config.backbone)
    parts = {name: dataset.subset(name) for name in SPLITS}
    for name in ("train", "dev"):
        if len(parts[name]) == 0:
            raise UserError(f"the {name} split is empty; training needs train and dev proteins")
    limit = min(config.max_length, backbone.max_length)
    for name, part in parts.items():
        part.sequences, cut = truncate(part.sequences, limit)
        if cut:
            console.info(
                f"{cut} {name} proteins longer than {limit} residues keep their first {limit}."
            )
    torch_device = distributed.pick_device(device)
    precision = hardware.resolve_precision(torch_device, config.precision)
    # The budget must admit at least one protein of the longest allowed length.
    budget = hardware.plan_budget(
        torch_device,
        hardware.memory_model(backbone),
        training=True,
        frozen=config.freeze,
        precision=precision,
        min_tokens=backbone.tokens(limit),
        requested=config.max_tokens,
        checkpointing=config.gradient_checkpointing,
    )
    budget = agreed_budget(budget)
    weights = positive_weights(parts["train"].labels, dataset.label_names, config.loss)
    return RunSetup(
        workspace,
        out_of(workspace),
        record,
        config,
        dataset,
        parts,
        backbone,
        torch_device,
        precision,
        budget,
        weights,
    )


def agreed_budget(budget: hardware.Budget) -> hardware.Budget:
    """The budget of every rank: the smallest one any rank planned.

    Each rank plans from its own free memory, which differs when another process shares a GPU.
    But the budget composes the global batch list, which every rank must build alike, so the
    ranks agree on one value: the smallest, which fits everywhere. How each rank then splits its
    own rows to fit its memory is its own affair (see :func:`synnav_cli.train.steps.accumulate`).
    """
    if not distributed.active():
        return budget
    tokens = distributed.min_across(budget.max_tokens)
    source = f"{budget.source}; the smallest of {distributed.world_size()} processes"
    return dataclasses.replace(budget, max_tokens=tokens, source=source)


def truncate(sequences: list[str], limit: int) -> tuple[list[str], int]:
    """``sequences`` cut to ``limit`` residues, and how many were cut."""
    cut = sum(len(s) > limit for s in sequences)
    # The N-terminus carries most targeting signals (signal peptides, mitochondrial presequences),
    # so a long protein keeps its start.
    return [s[:limit] for s in sequences], cut
