"""The fine-tuning loop: epochs of steps over encoder and head, the best dev epoch kept.

Training state is checkpointed after every epoch in ``<out>.partial/``, and at the next step when
SIGTERM or SIGINT arrives; a resumed run (:func:`synnav_cli.train.run.resume`) gives the model an
uninterrupted run would have given. The checkpoint holds no pickle (see
:mod:`synnav_cli.train.checkpoint`).

Under ``torchrun`` the same code trains with DistributedDataParallel (see
:mod:`synnav_cli.train.ddp`). Only rank 0 writes the workspace and the model directory, which
must therefore be on a filesystem every rank can read.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch

from synnav_cli import console
from synnav_cli.backbones.base import to_device
from synnav_cli.errors import UserError
from synnav_cli.metrics import evaluate_predictions, selection_score
from synnav_cli.model import LocalizationModel
from synnav_cli.runtime import distributed, hardware
from synnav_cli.scoring import batches
from synnav_cli.scoring.score import Runtime, score_sequences
from synnav_cli.train import checkpoint
from synnav_cli.train.ddp import BatchDropout, freeze_unused, local_rows, shard_loss, wrap
from synnav_cli.train.finish import finish
from synnav_cli.train.setup import RunSetup, TrainResult
from synnav_cli.train.steps import StopRequest, accumulate, lr_factor

BEST_FILE = "best.safetensors"
# Steps between two reads of the training loss from the device (each read waits for the GPU).
LOSS_EVERY = 16


class FineTuning:
    """Full fine-tuning of encoder and head: built once, then epochs of steps."""

    def __init__(self, setup: RunSetup, *, offline: bool) -> None:
        self.setup = setup
        config, backbone, device = setup.config, setup.backbone, setup.device
        limit = min(config.max_length, backbone.max_length)
        budget = setup.budget
        max_tokens = budget.max_tokens
        console.info(
            f"Training {backbone.id} on {len(setup.parts['train'])} proteins "
            f"(dev {len(setup.parts['dev'])}, test {len(setup.parts['test'])}), device {device}, "
            f"precision {setup.precision}, up to {config.batch_size} proteins / "
            f"{max_tokens} tokens a batch "
            f"({budget.source})"
            + (f", over {distributed.world_size()} processes." if distributed.active() else ".")
        )
        torch.manual_seed(config.seed)
        encoder = backbone.build_encoder(pretrained=True, offline=offline)
        self.model = LocalizationModel(
            encoder, backbone.embedding_dim, len(setup.dataset.label_names)
        ).to(device)
        if budget.recompute_above is not None and not backbone.set_gradient_checkpointing(
            self.model.encoder, False
        ):
            console.warn(
                f"{backbone.id} cannot recompute activations; gradient checkpointing is off"
            )
            if budget.recompute_above:
                max_tokens = max(budget.recompute_above, backbone.tokens(limit))
            budget = hardware.Budget(max_tokens, budget.source)
        self.budget = budget
        self.dropout = self.model.head.replace_dropout(BatchDropout(self.model.head.dropout.p))
        unused = freeze_unused(self.model, self._probe_batch(), self._autocast())
        if unused:
            console.detail(f"not trained (no gradient reaches them): {', '.join(unused)}")
        # Gradients are averaged across ranks in backward; one process trains the model itself.
        self.net = wrap(self.model, device)
        self.no_sync = getattr(self.net, "no_sync", nullcontext)
        self.pos_weight = torch.tensor(setup.pos_weight, device=device)
        console.detail(
            "pos_weight: "
            + ", ".join(f"{n}={w:.2f}" for n, w in zip(setup.dataset.label_names, setup.pos_weight))
        )
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        # One fused kernel for all parameters on GPUs instead of a loop of small ones a tensor.
        self.optimizer = torch.optim.AdamW(
            self.trainable,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            fused=True if device.type == "cuda" else None,
        )
        self.score_runtime = Runtime(device, setup.precision, max_tokens, config.batch_size)
        self.step_runtime = Runtime(device, setup.precision, max_tokens, config.batch_size)
        # What a checkpoint must agree with: the data and the configuration this run started with.
        self.identity = {
            "config": asdict(config),
            "data_sha256": setup.record["data_sha256"],
            "split_sha256": setup.record["split_sha256"],
        }
        saved = checkpoint.load(setup.workspace) if checkpoint.exists(setup.workspace) else None
        if saved is not None and saved.get("identity") != self.identity:
            raise UserError(
                f"the checkpoint in {setup.workspace} was made with other data or another "
                "configuration; resuming would mix two runs (delete the directory to start over)"
            )
        # Batches are composed with the budget the run started with, even on other hardware, so
        # that a resumed run takes the same steps (memory is still bounded by the step runtime).
        self.batch_tokens = (
            max_tokens
            if saved is None
            else checkpoint.saved_int(saved, "batch_tokens", setup.workspace)
        )
        self.lengths = [backbone.tokens(len(s)) for s in setup.parts["train"].sequences]
        self.labels = torch.tensor(setup.parts["train"].labels)
        steps_per_epoch = len(
            batches.training_batches(
                self.lengths, self.batch_tokens, config.batch_size, np.random.default_rng(0)
            )
        )
        total_steps = steps_per_epoch * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step, total_steps)
        )
        self.scaler = hardware.grad_scaler(device, setup.precision)
        self.batch_rng = np.random.default_rng(config.seed)
        self.progress = checkpoint.Progress()
        # (loss, proteins) of the steps whose loss was not yet read from the device
        self.pending_loss: list[tuple[torch.Tensor, int]] = []
        if saved is not None:
            self._restore(saved)

    def _autocast(self):
        return hardware.autocast(self.setup.device, self.setup.precision)

    def _probe_batch(self):
        """The shortest training protein, tokenized on the device: one cheap pass for
        :func:`freeze_unused`."""
        sequences = self.setup.parts["train"].sequences
        shortest = min(sequences, key=len)
        return self.setup.backbone.tokenize([shortest]).to(self.setup.device)

    # --- checkpoints ----------------------------------------------------------------------------

    def _restore(self, saved: dict) -> None:
        workspace = self.setup.workspace
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            checkpoint.restore_scaler(self.scaler, saved["scaler"])
            best = saved["best_score"]
            self.progress = checkpoint.Progress(
                int(saved["epoch"]),
                int(saved["step"]),
                float(saved["epoch_loss"]),
                -math.inf if best is None else float(best),
                int(saved["best_epoch"]),
                list(saved["history"]),
            )
            self.batch_rng.bit_generator.state = saved["batch_rng"]
            checkpoint.restore_rng_state(saved["rng"], self.setup.device)
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise UserError(
                f"the checkpoint in {workspace} is damaged ({type(error).__name__}); "
                "delete the directory to start over"
            ) from None
        done = self.progress
        where = (
            f"step {done.step} of epoch {done.epoch + 1}"
            if done.step
            else f"the end of epoch {done.epoch}"
        )
        console.info(f"Resuming from {where}.")

    def _collect_loss(self) -> None:
        """Add the losses of the steps taken since the last call to the epoch's (one sync)."""
        if self.pending_loss:
            values = torch.stack([loss for loss, _ in self.pending_loss]).tolist()
            for value, (_, proteins) in zip(values, self.pending_loss):
                self.progress.epoch_loss += value * proteins
            self.pending_loss.clear()

    def _save(self, batch_rng: dict) -> None:
        self._collect_loss()
        done = self.progress
        if distributed.is_main():
            checkpoint.save(
                self.setup.workspace,
                {
                    "identity": self.identity,
                    "batch_tokens": self.batch_tokens,
                    "model": self.model.state_dict(),
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "scaler": self.scaler.state_dict(),
                    "epoch": done.epoch,
                    "step": done.step,
                    "epoch_loss": done.epoch_loss,
                    "best_score": None if done.best_score == -math.inf else done.best_score,
                    "best_epoch": done.best_epoch,
                    "history": done.history,
                    "batch_rng": batch_rng,
                    "rng": checkpoint.rng_state(self.setup.device),
                },
            )
        distributed.barrier()  # the checkpoint is complete before any rank may stop

    # --- the loop -------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, workspace = self.setup.config, self.setup.workspace
        with StopRequest() as stop:
            while self.progress.epoch < config.epochs:
                self._epoch(stop)
                self._save(self.batch_rng.bit_generator.state)
                # A signal may reach the ranks at different moments; all stop at the same epoch.
                if distributed.any_rank(stop.requested) and self.progress.epoch < config.epochs:
                    raise UserError(
                        f"training stopped after epoch {self.progress.epoch}; "
                        f"continue with `synnav train --resume {workspace}`"
                    )
        checkpoint.load_weights(self.model, workspace / BEST_FILE, workspace)
        probabilities = {
            name: self._score(part.sequences)
            for name, part in self.setup.parts.items()
            if len(part)
        }
        return finish(
            self.setup, self.model, probabilities, self.progress.best_epoch, self.progress.history
        )

    def _epoch(self, stop: StopRequest) -> None:
        """One pass over the training split (or its rest, after a mid-epoch resume), then dev."""
        config, done = self.setup.config, self.progress
        started = time.monotonic()
        self.model.train()
        # The batch order is drawn from this state, so a mid-epoch checkpoint keeps it to draw the
        # same order again and skip the steps already taken.
        epoch_rng = self.batch_rng.bit_generator.state
        order = batches.training_batches(
            self.lengths, self.batch_tokens, config.batch_size, self.batch_rng
        )
        bar = console.Progress(len(self.lengths), f"epoch {done.epoch + 1}/{config.epochs}")
        for step, index in enumerate(order):
            if step < done.step:
                bar.advance(len(index))
                continue
            step_loss = self._step(index)
            self.pending_loss.append((step_loss, len(index)))
            done.step = step + 1
            # Reading a loss waits for the GPU to finish the step; done every few steps only, so
            # that the host prepares the next batch while the GPU still works on this one.
            if done.step % LOSS_EVERY == 0 or done.step == len(order):
                self._collect_loss()
                bar.advance(len(index), f"loss {float(step_loss):.4f}")
            else:
                bar.advance(len(index))
            # A signal may reach the ranks at different moments; all stop at the same step.
            if step + 1 < len(order) and distributed.any_rank(stop.requested):
                bar.close()
                self._save(epoch_rng)
                raise UserError(
                    f"training stopped at step {step + 1} of epoch {done.epoch + 1}; "
                    f"continue with `synnav train --resume {self.setup.workspace}`"
                )
        bar.close()
        self._collect_loss()
        self._end_epoch(distributed.sum_across(done.epoch_loss), time.monotonic() - started)

    def _step(self, index: list[int]) -> torch.Tensor:
        """One optimiser step on the global batch ``index``; returns its loss (on the device, so
        that taking a step does not wait for the GPU)."""
        setup, model = self.setup, self.model
        positions, rows, weight = local_rows(index)
        known_global = int((~torch.isnan(self.labels[index])).sum())
        self.dropout.draw(len(index), setup.backbone.embedding_dim, positions, setup.device)
        mask = self.dropout.mask
        sequences = setup.parts["train"].sequences

        def backward(part: list[int]) -> torch.Tensor:
            self.dropout.mask = mask[part]
            tokens = batches.padded_cost([self.lengths[rows[p]] for p in part])
            setup.backbone.set_gradient_checkpointing(model.encoder, self.budget.recompute(tokens))
            batch = setup.backbone.tokenize([sequences[rows[p]] for p in part]).to(setup.device)
            with self._autocast():
                logits = self.net(batch)
            targets = self.labels[[rows[p] for p in part]]
            known_local = int((~torch.isnan(targets)).sum())
            targets = to_device(targets, setup.device)
            part_loss = shard_loss(
                logits, targets, self.pos_weight, known_local, known_global, weight
            )
            self.scaler.scale(part_loss).backward()
            return part_loss.detach()

        self.optimizer.zero_grad(set_to_none=True)
        loss = accumulate(
            backward,
            [self.lengths[i] for i in rows],
            self.optimizer,
            self.step_runtime,
            self.no_sync,
        )
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # Summed over ranks (once an epoch) this is the global batch loss.
        return loss.detach() / distributed.world_size()

    def _end_epoch(self, total_loss: float, seconds: float) -> None:
        setup, done = self.setup, self.progress
        dev = setup.parts["dev"]
        label_names = setup.dataset.label_names
        dev_metrics = evaluate_predictions(
            dev.labels, self._score(dev.sequences), label_names, [0.5] * len(label_names)
        )
        dev_score = selection_score(dev_metrics)
        record = {
            "epoch": done.epoch + 1,
            "train_loss": round(total_loss / len(self.lengths), 6),
            "dev_mean_roc_auc": dev_metrics["mean"]["roc_auc"],
            "dev_mean_pr_auc": dev_metrics["mean"]["pr_auc"],
            "seconds": round(seconds, 2),
        }
        done.history.append(record)
        improved = dev_score > done.best_score or done.best_epoch == 0
        if improved:
            done.best_score, done.best_epoch = dev_score, done.epoch + 1
            if distributed.is_main():
                checkpoint.save_weights(self.model, setup.workspace / BEST_FILE)
        console.info(
            f"epoch {done.epoch + 1}/{setup.config.epochs}: train loss {record['train_loss']:.4f}, "
            f"dev mean ROC-AUC {_fmt(record['dev_mean_roc_auc'])}"
            f"{' (best)' if improved else ''}, {record['seconds']:.1f}s"
        )
        done.epoch, done.step, done.epoch_loss = done.epoch + 1, 0, 0.0

    def _score(self, sequences: list[str]) -> np.ndarray:
        model, backbone, runtime = self.model, self.setup.backbone, self.score_runtime
        return distributed.score_sharded(
            lambda part: score_sequences(model, backbone, part, runtime), sequences
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
