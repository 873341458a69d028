"""Build a model's domain index (``domain.safetensors``) from its training and dev proteins.

Training ids and whole sequences (for identity), the pooled embeddings of the training proteins
as the model sees them (cut to its maximum length), and distance thresholds set on dev: the
median and 95th percentile of the dev proteins' embedding distances to training. Called at the
end of ``synnav train`` and by ``scripts/add_domain_index.py`` for a model trained before.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synnav_cli import console
from synnav_cli.backbones.base import Backbone
from synnav_cli.data.dataset import Dataset
from synnav_cli.domain.assess import dev_thresholds, nearest_distances
from synnav_cli.domain.index import INDEX_FILE, read_index, write_index
from synnav_cli.model import LocalizationModel
from synnav_cli.scoring.embed import embed_sequences
from synnav_cli.scoring.score import Runtime
from synnav_cli.sharing.files import list_model_file
from synnav_cli.train.setup import RunSetup


def index_training_proteins(
    setup: RunSetup, model: LocalizationModel, pooled: dict[str, np.ndarray] | None = None
) -> Path:
    """The domain index of a model ``synnav train`` just saved in ``setup.out``.

    ``pooled`` holds the train and dev proteins' pooled embeddings when the run already has them
    (a frozen backbone: the cached features the head was trained on), so the encoder, which such
    a run never builds, is not needed.
    """
    runtime = Runtime(setup.device, setup.precision, setup.budget.max_tokens)
    limit = min(setup.config.max_length, setup.backbone.max_length)
    dataset = setup.dataset
    model.eval()
    return build_domain_index(
        setup.out,
        model,
        setup.backbone,
        runtime,
        dataset.subset("train"),
        dataset.subset("dev"),
        limit,
        pooled,
    )


def build_domain_index(
    folder: Path,
    model: LocalizationModel,
    backbone: Backbone,
    runtime: Runtime,
    train: Dataset,
    dev: Dataset,
    max_length: int,
    known: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write ``folder/domain.safetensors``; ``train`` and ``dev`` hold whole sequences.

    ``known`` maps ``"train"``/``"dev"`` to pooled embeddings already computed, in their order.
    """

    def pooled(sequences: list[str], split: str) -> np.ndarray:
        if known is not None and split in known:
            return np.asarray(known[split], dtype=np.float32)
        cut = [s[:max_length] for s in sequences]
        return embed_sequences(model.encoder, backbone, cut, runtime).pooled

    console.detail(f"Domain index: embedding {len(train):,} training and {len(dev):,} dev proteins")
    path = Path(folder) / INDEX_FILE
    train_pooled = pooled(train.sequences, "train")
    write_index(path, train.entries, train.sequences, train_pooled, None)
    # Dev distances against what the file holds (a sample when training is large).
    stored = read_index(folder)
    dev_pooled = pooled(dev.sequences, "dev")
    distances = nearest_distances(stored.embeddings, stored.standardize(dev_pooled))
    thresholds = dev_thresholds(distances, backbone.implausibility(dev_pooled))
    info = {
        "training_proteins": len(train),
        "embedded_training_proteins": len(stored.embeddings),
        "dev_proteins": len(dev),
        "dev_distance_quantiles": {
            q: round(float(np.quantile(distances, float(q))), 6) for q in ("0.5", "0.9", "0.95")
        },
    }
    write_index(path, train.entries, train.sequences, train_pooled, thresholds, info)
    list_model_file(folder, INDEX_FILE)  # so that `synnav models push` carries it
    return path
