"""Training the head alone on a frozen backbone, from pooled embeddings cached on disk.

With the encoder frozen, a protein's pooled embedding is a constant, so the backbone runs once
per protein and never again: every epoch, and every later run with another head, loss, learning
rate or seed on the same proteins, reads the embeddings back from the
:class:`~synnav_cli.train.embedding_cache.EmbeddingCache` (keyed by backbone fingerprint,
precision and
sequence). A fully cached run never builds the encoder, let alone loads its weights.

Training the head on ``[proteins, width]`` vectors takes seconds, so there is no per-epoch
checkpoint: an interrupted run loses only the head, and the embeddings it computed are kept.
Under ``torchrun`` rank 0 fills the cache while the others wait; then every rank reads it and
trains the same head from the same seed (only rank 0 writes the model directory).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from synnav_cli import console
from synnav_cli.backbones.base import Backbone
from synnav_cli.metrics import evaluate_predictions, selection_score
from synnav_cli.model import LocalizationModel, masked_bce
from synnav_cli.runtime import distributed, hardware
from synnav_cli.scoring.score import Runtime
from synnav_cli.train.embedding_cache import EmbeddingCache, pooled_embeddings
from synnav_cli.train.finish import finish
from synnav_cli.train.setup import RunSetup, TrainResult
from synnav_cli.train.steps import lr_factor


@dataclass
class FrozenResult:
    model: LocalizationModel  # the trained head on an encoder placeholder (never run)
    best_epoch: int
    history: list[dict]
    probabilities: dict[str, np.ndarray]  # split name -> [proteins, labels]


class _NeverBuilt(nn.Module):
    """Stands in for an encoder that a fully cached run does not need."""

    def forward(self, input_ids, attention_mask):
        raise RuntimeError("the encoder of a frozen-backbone run is not built")


def cached_features(
    backbone: Backbone,
    splits: dict[str, list[str]],
    runtime: Runtime,
    *,
    num_labels: int,
    offline: bool,
    cache: EmbeddingCache | None = None,
) -> dict[str, np.ndarray]:
    """Pooled embeddings of every split's sequences, computing only what the cache lacks."""
    cache = cache or EmbeddingCache()
    built: list[LocalizationModel] = []

    def build() -> LocalizationModel:
        if not built:
            encoder = backbone.build_encoder(pretrained=True, offline=offline)
            built.append(
                LocalizationModel(encoder, backbone.embedding_dim, num_labels).to(runtime.device)
            )
        return built[0]

    everything = [s for sequences in splits.values() for s in sequences]
    if distributed.is_main():
        progress = console.Progress(len(everything), "embed")
        pooled_embeddings(build, backbone, everything, runtime, cache, progress)
        progress.close()
    distributed.barrier()  # the cache is complete before any rank reads it
    features = {
        name: pooled_embeddings(build, backbone, seqs, runtime, cache)
        for name, seqs in splits.items()
        if seqs
    }
    console.info(
        f"Frozen {backbone.id}: {len(everything)} pooled embeddings from {cache.path}"
        + ("" if built else " (all cached; the backbone was not run)")
        + "."
    )
    return features


def fit_head(
    features: dict[str, np.ndarray],
    labels: dict[str, np.ndarray],
    label_names: list[str],
    pos_weight: np.ndarray,
    *,
    embedding_dim: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
    schedule,
    device: torch.device,
) -> FrozenResult:
    """Train a ``LocalizationHead`` on fixed features; keep the best dev epoch.

    ``schedule(step, total_steps)`` is the learning-rate factor, as in full fine-tuning.
    """
    torch.manual_seed(seed)
    model = LocalizationModel(_NeverBuilt(), embedding_dim, len(label_names)).to(device)
    head = model.head
    x = {name: torch.from_numpy(f).to(device) for name, f in features.items()}
    y = torch.from_numpy(labels["train"]).to(device)
    weights = torch.tensor(pos_weight, device=device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(y) / batch_size)
    total = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total))
    rng = np.random.default_rng(seed)

    @torch.no_grad()
    def predict(name: str) -> np.ndarray:
        head.eval()
        return torch.sigmoid(head(x[name]).float()).cpu().numpy()

    best_score, best_epoch, best_state, history = -math.inf, 0, None, []
    for epoch in range(epochs):
        started = time.monotonic()
        head.train()
        total_loss = 0.0
        order = torch.from_numpy(rng.permutation(len(y))).to(device)
        for start in range(0, len(y), batch_size):
            index = order[start : start + batch_size]
            loss = masked_bce(head(x["train"][index]), y[index], weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(index)
        dev = evaluate_predictions(
            labels["dev"], predict("dev"), label_names, [0.5] * len(label_names)
        )
        score = selection_score(dev)
        record = {
            "epoch": epoch + 1,
            "train_loss": round(total_loss / len(y), 6),
            "dev_mean_roc_auc": dev["mean"]["roc_auc"],
            "dev_mean_pr_auc": dev["mean"]["pr_auc"],
            "seconds": round(time.monotonic() - started, 2),
        }
        history.append(record)
        if score > best_score or best_epoch == 0:
            best_score, best_epoch, best_state = score, epoch + 1, copy.deepcopy(head.state_dict())
        console.detail(f"epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}")
    head.load_state_dict(best_state)
    probabilities = {name: predict(name) for name in x}
    console.info(
        f"Trained the head for {epochs} epochs on cached embeddings (best epoch {best_epoch})."
    )
    return FrozenResult(model, best_epoch, history, probabilities)


def train_head(setup: RunSetup, *, offline: bool) -> TrainResult:
    """Pooled embeddings computed once and cached; the head trained on them (see ``head_only``)."""
    config, parts = setup.config, setup.parts
    hardware.report_budget("Embedding", setup.budget)
    runtime = Runtime(setup.device, setup.precision, setup.budget.max_tokens)
    features = cached_features(
        setup.backbone,
        {k: p.sequences for k, p in parts.items()},
        runtime,
        num_labels=len(setup.dataset.label_names),
        offline=offline,
    )
    result = fit_head(
        features,
        {k: p.labels for k, p in parts.items()},
        setup.dataset.label_names,
        setup.pos_weight,
        embedding_dim=setup.backbone.embedding_dim,
        epochs=config.epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        seed=config.seed,
        schedule=lr_factor,
        device=setup.device,
    )
    return finish(
        setup, result.model, result.probabilities, result.best_epoch, result.history, features
    )
