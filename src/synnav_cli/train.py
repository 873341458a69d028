"""Fine-tune a backbone and localization head; keep the best dev epoch; write a model directory.

Training state is checkpointed after every epoch in ``<out>.partial/``, and at the next step when
SIGTERM or SIGINT arrives; ``resume`` continues from there and gives the model an uninterrupted
run would have given. The checkpoint holds no pickle (see :mod:`synnav_cli.checkpoint`), a resume
writes only to the run's own location, and the data and configuration must be the ones the run
started with. One run at a time holds the workspace (a lock file inside it). The finished model
directory appears only when training completes.

Under ``torchrun`` the same code trains with DistributedDataParallel: every rank builds the same
batch list from the seed and takes a round-robin share of the rows of each batch, so an optimiser
step sees the same global batch (and the same gradient) as in one process. Only rank 0 writes the
workspace and the model directory, which must therefore be on a filesystem every rank can read.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from synnav_cli import (
    __version__,
    batching,
    checkpoint,
    console,
    distributed,
    frozen,
    hardware,
    paths,
)
from synnav_cli.data import Dataset, assign_splits, read_dataset
from synnav_cli.errors import UserError, quoted
from synnav_cli.files import exclusive_lock, replace_atomically, write_json_atomic
from synnav_cli.inference import Runtime, halve_budget, score_sequences
from synnav_cli.metrics import (
    THRESHOLD_METRICS,
    evaluate_predictions,
    selection_score,
    tune_threshold,
)
from synnav_cli.model import LOSS_PRESETS, LocalizationModel, masked_bce, positive_weights
from synnav_cli.modeldir import check_replaceable, save_model_dir
from synnav_cli.plugins import DEFAULT_BACKBONE, get_backbone

RUN_FILE = "run.json"
BEST_FILE = "best.safetensors"
LOCK_FILE = "lock"
PARTIAL_SUFFIX = ".partial"
WARMUP_FRACTION = 0.05


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
                raise UserError(f"{spec.name.replace('_', ' ')} must be {_TYPE_WORDS[str(spec.type)]}, "
                                f"not {quoted(value)}")
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


_TYPE_WORDS = {"str": "text", "int": "a whole number", "float": "a number", "bool": "true or false",
               "int | None": "a whole number or null", "bool | None": "true, false or null"}


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


@dataclass
class TrainResult:
    model_dir: Path
    metrics: dict
    best_epoch: int
    history: list[dict] = field(default_factory=list)


def _rng_state() -> dict:
    kind, key, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": [kind, torch.from_numpy(key.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, key, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), position, has_gauss, gauss))


def _save_weights(model: nn.Module, path: Path) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    replace_atomically(path, lambda tmp: save_file(tensors, str(tmp)))


def _truncate(sequences: list[str], limit: int) -> tuple[list[str], int]:
    cut = sum(len(s) > limit for s in sequences)
    # The N-terminus carries most targeting signals (signal peptides, mitochondrial presequences),
    # so a long protein keeps its start.
    return [s[:limit] for s in sequences], cut


class _StopRequest:
    """Turns SIGTERM/SIGINT into a checkpoint at the end of the current step."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second signal stops at once
            raise KeyboardInterrupt
        self.requested = True
        console.info("Stopping after this step; the checkpoint will allow --resume.")

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _BatchDropout(nn.Module):
    """Dropout with a mask drawn for the whole global batch, then cut to this rank's rows.

    Every rank draws the same mask from the same RNG state, so a protein gets the same mask
    whichever rank (or how many ranks) it is trained on, and N-process training follows the
    1-process run. ``mask`` is set before each training step; in eval mode this is the identity.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.mask: torch.Tensor | None = None

    def draw(self, rows: int, width: int, keep: list[int], device: torch.device) -> None:
        full = (torch.rand(rows, width) >= self.p).float() / (1.0 - self.p)
        self.mask = full[keep].to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or self.mask is None:
            return x
        return x * self.mask.to(x.dtype)


def _local_rows(index: list[int]) -> tuple[list[int], list[int], float]:
    """This rank's positions within a global batch, and 1.0, or 0.0 when it has none.

    A rank with no rows still runs a step on one row with zero weight: DistributedDataParallel
    needs every rank in every gradient all-reduce.
    """
    positions = list(range(distributed.rank(), len(index), distributed.world_size()))
    if positions:
        return positions, [index[p] for p in positions], 1.0
    return [0], [index[0]], 0.0


def _shard_loss(logits, targets, pos_weight, known_global: int, weight: float) -> torch.Tensor:
    """This rank's part of the global batch loss, scaled so that DDP's gradient average equals
    the gradient of :func:`masked_bce` over the whole global batch.

    masked_bce divides by the number of known labels in the batch; here that count is the
    global one, and the factor ``world`` undoes DDP's division by the number of ranks.
    """
    known_local = int((~torch.isnan(targets)).sum())
    local_sum = masked_bce(logits, targets, pos_weight) * max(known_local, 1)
    return local_sum * (weight * distributed.world_size() / max(known_global, 1))


def default_out_dir(backbone_id: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return paths.models_dir() / f"{backbone_id}-{stamp}"


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
        out: the model directory to create; it must not exist unless ``force``.
        force: replace an existing model directory once the new one is complete.
        device: auto, cpu, cuda, cuda:N or mps.
        offline: never download; use only cached weights.
    """
    config.validate()
    distributed.init()
    backbone = get_backbone(config.backbone)
    config.backbone = backbone.id
    # Ranks would each stamp their own time; rank 0's name is the one used.
    out = distributed.broadcast(Path(out) if out is not None else default_out_dir(backbone.id))
    check_replaceable(out, force)
    workspace = out.with_name(out.name + PARTIAL_SUFFIX)
    with _holding(workspace):
        if checkpoint.exists(workspace):
            raise UserError(
                f"an interrupted run is waiting in {workspace}; continue it with "
                f"`synnav train --resume {workspace}` or delete that directory"
            )
        dataset = assign_splits(read_dataset(data_path), seed=config.seed)
        run = {"config": asdict(config), "data": str(Path(data_path).resolve()),
               "data_sha256": dataset.content_hash(), "split_sha256": dataset.split_hash(), "force": force}
        if distributed.is_main():
            write_json_atomic(workspace / RUN_FILE, run)
        distributed.barrier()
        return _run(workspace, out, run, config, dataset, device=device, offline=offline)


def resume(workspace: Path, *, device: str = "auto", offline: bool = False) -> TrainResult:
    """Continue an interrupted run from its last checkpoint (``<out>.partial`` or ``<out>``).

    The model is written next to the workspace (``<out>.partial`` gives ``<out>``), never to a
    location read from the workspace's files.
    """
    distributed.init()
    workspace = Path(workspace)
    if not workspace.name.endswith(PARTIAL_SUFFIX):
        workspace = workspace.with_name(workspace.name + PARTIAL_SUFFIX)
    if not (workspace / RUN_FILE).is_file():
        raise UserError(f"nothing to resume in {workspace}: no {RUN_FILE} there")
    out = workspace.with_name(workspace.name.removesuffix(PARTIAL_SUFFIX))
    with _holding(workspace):
        run = _read_run(workspace)
        config = config_from_record(run["config"], workspace / RUN_FILE)
        dataset = assign_splits(read_dataset(run["data"]), seed=config.seed)
        if (dataset.content_hash(), dataset.split_hash()) != (run["data_sha256"], run["split_sha256"]):
            raise UserError(f"{run['data']} has changed since this run started (its proteins, labels or "
                            "split differ); resuming would mix two datasets. Start a new run instead")
        check_replaceable(out, run["force"])
        return _run(workspace, out, run, config, dataset, device=device, offline=offline)


def _read_run(workspace: Path) -> dict:
    path = workspace / RUN_FILE
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise UserError(f"{path} is damaged ({type(error).__name__}); delete {workspace} to start over") from None
    expected = {"config": dict, "data": str, "data_sha256": str, "split_sha256": str, "force": bool}
    if not isinstance(run, dict) or any(not isinstance(run.get(k), t) for k, t in expected.items()):
        raise UserError(f"{path} is damaged or from an older synnav; delete {workspace} to start over")
    return run


@contextmanager
def _holding(workspace: Path) -> Iterator[None]:
    """The workspace, created if needed and locked by this run (rank 0 holds the lock for all)."""
    refusal = None
    with ExitStack() as stack:
        if distributed.is_main():
            try:
                workspace.mkdir(parents=True, exist_ok=True)
                stack.enter_context(exclusive_lock(workspace / LOCK_FILE, f"the training workspace {workspace}"))
            except UserError as error:
                refusal = str(error)
        refusal = distributed.broadcast(refusal)
        if refusal is not None:
            raise UserError(refusal)
        yield


def _run(workspace: Path, out: Path, run: dict, config: TrainConfig, dataset: Dataset, *, device: str,
         offline: bool) -> TrainResult:
    backbone = get_backbone(config.backbone)
    parts = {name: dataset.subset(name) for name in ("train", "dev", "test")}
    for name in ("train", "dev"):
        if len(parts[name]) == 0:
            raise UserError(f"the {name} split is empty; training needs train and dev proteins")
    limit = min(config.max_length, backbone.max_length)
    for name, part in parts.items():
        part.sequences, cut = _truncate(part.sequences, limit)
        if cut:
            console.info(f"{cut} {name} proteins longer than {limit} residues keep their first {limit}.")

    torch_device = distributed.pick_device(device)
    precision = hardware.resolve_precision(torch_device, config.precision)
    # The budget must admit at least one protein of the longest allowed length.
    budget = hardware.plan_budget(
        torch_device, hardware.memory_model(backbone), training=True, frozen=config.freeze,
        precision=precision, min_tokens=limit + 2, requested=config.max_tokens,
        checkpointing=config.gradient_checkpointing,
    )
    max_tokens = budget.max_tokens
    if config.freeze:
        hardware.report_budget("Embedding", budget)
        runtime = Runtime(torch_device, precision, max_tokens)
        features = frozen.cached_features(backbone, {k: p.sequences for k, p in parts.items()}, runtime,
                                          num_labels=len(dataset.label_names), offline=offline)
        weights = positive_weights(parts["train"].labels, dataset.label_names, config.loss)
        result = frozen.fit_head(
            features, {k: p.labels for k, p in parts.items()}, dataset.label_names, weights,
            embedding_dim=backbone.embedding_dim, epochs=config.epochs, batch_size=config.batch_size,
            learning_rate=config.learning_rate, weight_decay=config.weight_decay, seed=config.seed,
            schedule=lr_factor, device=torch_device,
        )
        return _finish(config, backbone, dataset, run, parts, result.probabilities, result.model,
                       result.best_epoch, result.history, weights, precision, torch_device, workspace, out)
    console.info(
        f"Training {backbone.id} on {len(parts['train'])} proteins "
        f"(dev {len(parts['dev'])}, test {len(parts['test'])}), device {torch_device}, "
        f"precision {precision}, up to {config.batch_size} proteins / {max_tokens} tokens a batch "
        f"({budget.source})"
        + (f", over {distributed.world_size()} processes." if distributed.active() else ".")
    )

    torch.manual_seed(config.seed)
    encoder = backbone.build_encoder(pretrained=True, offline=offline)
    model = LocalizationModel(encoder, backbone.embedding_dim, len(dataset.label_names)).to(torch_device)
    if budget.recompute_above is not None and not hardware.set_gradient_checkpointing(model.encoder, False):
        console.warn(f"{backbone.id} cannot recompute activations; gradient checkpointing is off")
        if budget.recompute_above:
            max_tokens = max(budget.recompute_above, limit + 2)
        budget = hardware.Budget(max_tokens, budget.source)
    dropout = model.head.dropout = _BatchDropout(model.head.dropout.p)
    # Gradients are averaged across ranks in backward; one process trains the model itself.
    net = DistributedDataParallel(model) if distributed.active() else model
    weights = positive_weights(parts["train"].labels, dataset.label_names, config.loss)
    pos_weight = torch.tensor(weights, device=torch_device)
    console.detail("pos_weight: " + ", ".join(f"{n}={w:.2f}" for n, w in zip(dataset.label_names, weights)))

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    runtime = Runtime(torch_device, precision, max_tokens, config.batch_size)
    train_runtime = Runtime(torch_device, precision, max_tokens, config.batch_size)

    def score(sequences: list[str]) -> np.ndarray:
        return distributed.score_sharded(lambda part: score_sequences(model, backbone, part, runtime), sequences)
    # What a checkpoint must agree with: the data and the configuration this run started with.
    identity = {"config": asdict(config), "data_sha256": run["data_sha256"], "split_sha256": run["split_sha256"]}
    saved = checkpoint.load(workspace) if checkpoint.exists(workspace) else None
    if saved is not None and saved.get("identity") != identity:
        raise UserError(f"the checkpoint in {workspace} was made with other data or another configuration; "
                        "resuming would mix two runs (delete the directory to start over)")
    # Batches are composed with the budget the run started with, even on other hardware, so that
    # the resumed run takes the same steps (memory is still bounded by the runtime's budget).
    batch_tokens = max_tokens if saved is None else _saved_int(saved, "batch_tokens", workspace)
    rng = np.random.default_rng(config.seed)
    lengths = [len(s) + 2 for s in parts["train"].sequences]
    steps_per_epoch = len(batching.training_batches(lengths, batch_tokens, config.batch_size,
                                                    np.random.default_rng(0)))
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total_steps))
    scaler = hardware.grad_scaler(torch_device, precision)

    start_epoch, start_step, start_loss, best_score, best_epoch, history = 0, 0, 0.0, -math.inf, 0, []
    best_path = workspace / BEST_FILE
    if saved is not None:
        try:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            scaler.load_state_dict(saved["scaler"])
            start_epoch, start_step, start_loss = int(saved["epoch"]), int(saved["step"]), float(saved["epoch_loss"])
            best_epoch, history = int(saved["best_epoch"]), list(saved["history"])
            best_score = -math.inf if saved["best_score"] is None else float(saved["best_score"])
            rng.bit_generator.state = saved["batch_rng"]
            _set_rng_state(saved["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(f"the checkpoint in {workspace} is damaged ({type(error).__name__}); "
                            "delete the directory to start over") from None
        where = f"step {start_step} of epoch {start_epoch + 1}" if start_step else f"the end of epoch {start_epoch}"
        console.info(f"Resuming from {where}.")

    def save_checkpoint(epoch: int, step: int, epoch_loss: float, batch_rng: dict) -> None:
        if distributed.is_main():
            checkpoint.save(workspace, {
                "identity": identity, "batch_tokens": batch_tokens, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch, "step": step, "epoch_loss": epoch_loss,
                "best_score": None if best_score == -math.inf else best_score, "best_epoch": best_epoch,
                "history": history, "batch_rng": batch_rng, "rng": _rng_state(),
            })
        distributed.barrier()  # the checkpoint is complete before any rank may stop

    labels_train = torch.tensor(parts["train"].labels)
    with _StopRequest() as stop:
        for epoch in range(start_epoch, config.epochs):
            started = time.monotonic()
            model.train()
            # The batch order is drawn from this state, so a mid-epoch checkpoint keeps it to
            # draw the same order again and skip the steps already taken.
            epoch_rng = rng.bit_generator.state
            batches = batching.training_batches(lengths, batch_tokens, config.batch_size, rng)
            skip = start_step if epoch == start_epoch else 0
            progress = console.Progress(len(lengths), f"epoch {epoch + 1}/{config.epochs}")
            total_loss = start_loss if skip else 0.0
            for step, index in enumerate(batches):
                if step < skip:
                    progress.advance(len(index))
                    continue
                positions, rows, weight = _local_rows(index)
                known_global = int((~torch.isnan(labels_train[index])).sum())
                dropout.draw(len(index), backbone.embedding_dim, positions, torch_device)
                mask = dropout.mask

                def backward(part: list[int]) -> torch.Tensor:
                    dropout.mask = mask[part]
                    tokens = batching.padded_cost([lengths[rows[p]] for p in part])
                    hardware.set_gradient_checkpointing(model.encoder, budget.recompute(tokens))
                    batch = backbone.tokenize([parts["train"].sequences[rows[p]] for p in part]).to(torch_device)
                    with hardware.autocast(torch_device, precision):
                        logits = net(batch)
                    targets = labels_train[[rows[p] for p in part]].to(torch_device)
                    part_loss = _shard_loss(logits, targets, pos_weight, known_global, weight)
                    scaler.scale(part_loss).backward()
                    return part_loss.detach()

                optimizer.zero_grad(set_to_none=True)
                loss = _accumulate(backward, [lengths[i] for i in rows], optimizer, train_runtime)
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                # Summed over ranks (once an epoch, below) this is the global batch loss.
                step_loss = loss.item() / distributed.world_size()
                total_loss += step_loss * len(index)
                progress.advance(len(index), f"loss {step_loss:.4f}")
                # A signal may reach the ranks at different moments; all stop at the same step.
                if step + 1 < len(batches) and distributed.any_rank(stop.requested):
                    progress.close()
                    save_checkpoint(epoch, step + 1, total_loss, epoch_rng)
                    raise UserError(f"training stopped at step {step + 1} of epoch {epoch + 1}; "
                                    f"continue with `synnav train --resume {workspace}`")
            progress.close()
            total_loss = distributed.sum_across(total_loss)
            dev_probs = score(parts["dev"].sequences)
            dev_metrics = evaluate_predictions(parts["dev"].labels, dev_probs, dataset.label_names,
                                               [0.5] * len(dataset.label_names))
            dev_score = selection_score(dev_metrics)
            record = {"epoch": epoch + 1, "train_loss": round(total_loss / len(lengths), 6),
                      "dev_mean_roc_auc": dev_metrics["mean"]["roc_auc"],
                      "dev_mean_pr_auc": dev_metrics["mean"]["pr_auc"],
                      "seconds": round(time.monotonic() - started, 2)}
            history.append(record)
            improved = dev_score > best_score or best_epoch == 0
            if improved:
                best_score, best_epoch = dev_score, epoch + 1
                if distributed.is_main():
                    _save_weights(model, best_path)
            console.info(
                f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, "
                f"dev mean ROC-AUC {_fmt(record['dev_mean_roc_auc'])}"
                f"{' (best)' if improved else ''}, {record['seconds']:.1f}s"
            )
            save_checkpoint(epoch + 1, 0, 0.0, rng.bit_generator.state)
            # A signal may reach the ranks at different moments; all stop at the same epoch.
            if distributed.any_rank(stop.requested) and epoch + 1 < config.epochs:
                raise UserError(f"training stopped after epoch {epoch + 1}; "
                                f"continue with `synnav train --resume {workspace}`")

    try:
        model.load_state_dict(load_file(str(best_path)))
    except Exception as error:  # noqa: BLE001 - safetensors and torch raise several types
        raise UserError(f"{best_path} is damaged ({type(error).__name__}); delete {workspace} to start over") from None
    probs = {name: score(part.sequences) for name, part in parts.items() if len(part)}
    return _finish(config, backbone, dataset, run, parts, probs, model, best_epoch, history, weights, precision,
                   torch_device, workspace, out)


def _finish(config, backbone, dataset, run, parts, probs, model, best_epoch, history, weights, precision,
            torch_device, workspace, out) -> TrainResult:
    """Tune thresholds on dev, score every split, write the model directory."""
    unseen = unlearned_labels(parts["train"].labels)
    if unseen:
        names = ", ".join(dataset.label_names[j] for j in unseen)
        console.warn(f"no known value of {names} in the training split: the model cannot learn it; "
                     "it will give every protein 0.5 and never predict it")
        blank_labels(model, unseen)
        probs = {name: p.copy() for name, p in probs.items()}
        for p in probs.values():
            p[:, unseen] = 0.5
    thresholds = [
        NEVER if j in unseen else
        tune_threshold(parts["dev"].labels[:, j], probs["dev"][:, j], config.threshold_metric)
        for j in range(len(dataset.label_names))
    ]
    metrics = {name: evaluate_predictions(parts[name].labels, p, dataset.label_names, thresholds)
               for name, p in probs.items()}
    meta = _metadata(config, backbone, dataset, run["data"], thresholds, metrics, best_epoch, history,
                     weights, precision, torch_device)
    if distributed.is_main():
        save_model_dir(out, model, meta, encoder_frozen=config.freeze, force=run["force"])
        shutil.rmtree(workspace, ignore_errors=True)
    distributed.barrier()
    console.info(f"Saved model to {out} (best epoch {best_epoch}).")
    return TrainResult(out, metrics, best_epoch, history)


NEVER = 1.0  # the threshold of a label the model cannot predict: its probability stays 0.5


def unlearned_labels(train_labels: np.ndarray) -> list[int]:
    """Columns with no known value in the training split: the masked loss never saw them."""
    return [j for j in range(train_labels.shape[1]) if np.isnan(train_labels[:, j]).all()]


def blank_labels(model: LocalizationModel, columns: list[int]) -> None:
    """Make the head give exactly 0.5 for ``columns``, whatever the protein.

    An untrained head row keeps its random initialisation, so its scores are noise that reads
    like a prediction (and about half the proteins would cross a 0.5 threshold). Zero weights
    and bias say "no information" the same way for every protein.
    """
    with torch.no_grad():
        model.head.linear.weight[columns] = 0.0
        model.head.linear.bias[columns] = 0.0


def lr_factor(step: int, total_steps: int) -> float:
    """Linear warm-up over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _accumulate(backward, lengths: list[int], optimizer, runtime: Runtime) -> torch.Tensor:
    """Run ``backward`` over parts of one batch that fit ``runtime.max_tokens``; summed loss.

    ``backward(part)`` takes positions within the batch and returns its share of the batch loss
    after its backward pass, so the accumulated gradient is the whole batch's. On out of memory
    the gradients are cleared, the budget halves and the same batch starts over in smaller
    parts. Under DistributedDataParallel every rank must run the same backward passes, so there
    an out-of-memory error ends the run (lower --max-tokens).
    """
    while True:
        parts = batching.inference_batches(lengths, runtime.max_tokens)
        try:
            return sum(backward(part) for part in parts)
        except RuntimeError as error:
            if distributed.active():
                raise
            optimizer.zero_grad(set_to_none=True)
            halve_budget(runtime, lengths, error)


def _saved_int(saved: dict, key: str, workspace: Path) -> int:
    value = saved.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"the checkpoint in {workspace} is damaged ({key}); delete the directory to start over")
    return value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _metadata(config, backbone, dataset: Dataset, data_path, thresholds, metrics, best_epoch,
              history, weights, precision, device) -> dict:
    return {
        "backbone": backbone.id,
        "backbone_fingerprint": backbone.fingerprint(),
        "labels": dataset.label_names,
        "thresholds": dict(zip(dataset.label_names, [round(t, 6) for t in thresholds])),
        "threshold_metric": config.threshold_metric,
        "metrics": metrics,
        "best_epoch": best_epoch,
        "history": history,
        "config": asdict(config),
        "pos_weight": dict(zip(dataset.label_names, [round(float(w), 4) for w in weights])),
        "data": {
            "path": str(data_path),
            "sha256": dataset.content_hash(),
            "split_sha256": dataset.split_hash(),
            "proteins": {s: dataset.splits.count(s) for s in ("train", "dev", "test")},
            "label_counts": dataset.label_counts(),
        },
        "trained_on": {"device": str(device), "precision": precision},
        "versions": {"synnav": __version__, "torch": torch.__version__,
                     "python": platform.python_version(), "numpy": np.__version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
