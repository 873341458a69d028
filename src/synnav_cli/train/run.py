"""Start or resume a training run: the workspace, the data, then the fine-tuning loop.

A run lives in ``<out>.partial/`` until it completes; ``resume`` continues an interrupted one from
its last checkpoint and gives the model an uninterrupted run would have given. A resume writes
only to the run's own location, and the data and configuration must be the ones the run started
with. One run at a time holds the workspace (a lock file inside it). The finished model directory
appears only when training completes. A run that fails before its first checkpoint (weights that
cannot be fetched, say) removes the workspace it made: nothing in it could be resumed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path

from synnav_cli.data.dataset import assign_splits, read_dataset
from synnav_cli.errors import UserError
from synnav_cli.files import check_output_folder, write_json_atomic
from synnav_cli.modeldir import check_replaceable
from synnav_cli.plugins import get_backbone
from synnav_cli.runtime import distributed
from synnav_cli.train import checkpoint, head_only
from synnav_cli.train.config import TrainConfig, config_from_record
from synnav_cli.train.loop import FineTuning
from synnav_cli.train.setup import (
    LOCK_FILE,
    PARTIAL_SUFFIX,
    RUN_FILE,
    RunSetup,
    TrainResult,
    default_out_dir,
    holding,
    out_of,
    prepare,
    read_run,
    workspace_of,
)


def train(
    config: TrainConfig,
    data_path: Path,
    out: Path | None = None,
    *,
    force: bool = False,
    device: str = "auto",
    offline: bool = False,
) -> TrainResult:
    """Train a model on ``data_path`` and write it to ``out`` (default: the models directory).

    Arguments:
        config: training options.
        data_path: a dataset.json, CSV or TSV file with labels (and optionally splits).
        out: the model directory to create; it must not exist unless ``force`` (and then it must
            be a synnav model directory).
        force: replace an existing model directory once the new one is complete.
        device: auto, cpu, cuda, cuda:N or mps.
        offline: never download; use only cached weights.
    """
    config.validate()
    distributed.init()
    config.backbone = get_backbone(config.backbone).id
    if out is not None:
        check_output_folder(out)  # the models directory, the default's, is made when missing
    # Ranks would each stamp their own time; rank 0's name is the one used.
    out = distributed.broadcast(Path(out) if out is not None else default_out_dir(config.backbone))
    check_replaceable(out, force)
    workspace = workspace_of(out)
    with _new_workspace(workspace):
        if checkpoint.exists(workspace):
            raise UserError(
                f"an interrupted run is waiting in {workspace}; continue it with "
                f"`synnav train --resume {workspace}` or delete that directory"
            )
        dataset = assign_splits(read_dataset(data_path), seed=config.seed)
        record = {
            "config": asdict(config),
            "data": str(Path(data_path).resolve()),
            "data_sha256": dataset.content_hash(),
            "split_sha256": dataset.split_hash(),
            "force": force,
        }
        if distributed.is_main():
            write_json_atomic(workspace / RUN_FILE, record)
        distributed.barrier()
        return _train_prepared(
            prepare(workspace, record, config, dataset, device=device), offline=offline
        )


@contextmanager
def _new_workspace(workspace: Path) -> Iterator[None]:
    """:func:`holding` the workspace of a new run; if this run made it and fails before its first
    checkpoint, the workspace goes again (its files while the lock is held, then the folder)."""
    made = distributed.is_main() and not (workspace.exists() or workspace.is_symlink())
    discard = False
    try:
        with holding(workspace):
            try:
                yield
            except BaseException:
                discard = made and not checkpoint.exists(workspace)
                if discard:
                    for path in workspace.iterdir():
                        if path.is_dir() and not path.is_symlink():
                            shutil.rmtree(path, ignore_errors=True)
                        elif path.name != LOCK_FILE:
                            path.unlink(missing_ok=True)
                raise
    finally:
        if discard:
            with suppress(OSError):  # another run took it meanwhile: it is that run's now
                workspace.rmdir()


def resume(workspace: Path, *, device: str = "auto", offline: bool = False) -> TrainResult:
    """Continue an interrupted run from its last checkpoint (``<out>.partial`` or ``<out>``).

    The model is written next to the workspace (``<out>.partial`` gives ``<out>``), never to a
    location read from the workspace's files.
    """
    distributed.init()
    workspace = Path(workspace)
    if not workspace.name.endswith(PARTIAL_SUFFIX):
        workspace = workspace_of(workspace)
    if not (workspace / RUN_FILE).is_file():
        raise UserError(f"nothing to resume in {workspace}: no {RUN_FILE} there")
    with holding(workspace):
        record = read_run(workspace)
        config = config_from_record(record["config"], workspace / RUN_FILE)
        dataset = assign_splits(read_dataset(record["data"]), seed=config.seed)
        if (dataset.content_hash(), dataset.split_hash()) != (
            record["data_sha256"],
            record["split_sha256"],
        ):
            raise UserError(
                f"{record['data']} has changed since this run started (its proteins, labels or "
                "split differ); resuming would mix two datasets. Start a new run instead"
            )
        check_replaceable(out_of(workspace), record["force"])
        return _train_prepared(
            prepare(workspace, record, config, dataset, device=device), offline=offline
        )


def _train_prepared(setup: RunSetup, *, offline: bool) -> TrainResult:
    if setup.config.freeze:
        return head_only.train_head(setup, offline=offline)
    return FineTuning(setup, offline=offline).run()
