"""ESM C backbones (EvolutionaryScale, December 2024), in plain torch (:mod:`.esmc_model`).

The official checkpoints are single ``.pth`` state dicts in the ``EvolutionaryScale/esmc-*``
repositories, fetched through :mod:`synnav_cli.weights.hub` and loaded with ``weights_only=True``
(no pickled code runs) and ``mmap=True`` (the file is paged in, not read into a second copy).
Their licences differ: 300M is under the Cambrian Open licence, 600M under the Cambrian
Non-Commercial licence; ``synnav backbones`` and the first download say so.

``SYNNAV_TEST_TINY_BACKBONES=1`` swaps both sizes for ``ESMC_TINY`` (see
:func:`synnav_cli.weights.hub.tiny_backbones`); the weights are still looked up at the same
repository
and file, and loaded by the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from synnav_cli.backbones.base import Backbone, EncoderShape, TokenBatch, no_weight_init
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.hookspecs import hookimpl
from synnav_cli.weights import hub, integrity

if TYPE_CHECKING:
    from synnav_cli.backbones.esmc_model import ESMCConfig

# ESM C has rotary positions, so unlike ESM2 no learned position table caps the length. A cap is
# still needed: attention cost grows with the square of the length, and inputs far longer than
# the model's training contexts give embeddings of unknown quality. 2048 residues is the limit
# hosted ESM C services commonly apply; callers cut or refuse longer proteins before the model.
ESMC_MAX_LENGTH = 2048


class ESMC(Backbone):
    """One ESM C size: ``config_name`` names its ``ESMCConfig`` in :mod:`.esmc_model`.

    The model module is imported only when the architecture is needed (building an encoder, or
    the tiny switch): it pulls in torch's compiler stack, which would make every ``synnav``
    command seconds slower if registration imported it. ``embedding_dim`` is therefore given
    here too; a test checks it against the config.
    """

    def __init__(
        self,
        id: str,
        config_name: str,
        embedding_dim: int,
        weights_repo: str,
        weights_file: str,
        license: str,
        description: str,
    ) -> None:
        self.id = id
        self.config_name = config_name
        self._embedding_dim = embedding_dim
        self.max_length = ESMC_MAX_LENGTH
        self.weights_repo = weights_repo
        self.weights_file = weights_file
        self.license = license
        self.description = description

    @property
    def config(self) -> ESMCConfig:
        from synnav_cli.backbones import esmc_model

        return getattr(esmc_model, "ESMC_TINY" if hub.tiny_backbones() else self.config_name)

    @property
    def embedding_dim(self) -> int:  # type: ignore[override]
        return self.config.d_model if hub.tiny_backbones() else self._embedding_dim

    def tokenize(self, sequences: Sequence[str]) -> TokenBatch:
        return ESM_VOCABULARY.batch(sequences)

    def encoder_shape(self) -> EncoderShape:
        config = self.config
        return EncoderShape(
            config.d_model, config.n_layers, config.ffn_hidden, ffn_matrices=3
        )  # SwiGLU

    def fingerprint(self) -> str:
        return f"{self.id}+tiny" if hub.tiny_backbones() else self.id

    def weights_cached(self) -> bool:
        return hub.is_cached(self.weights_repo, self.weights_file)

    def fetch_weights(self, *, offline: bool = False) -> Path:
        """Download (unless cached) and verify the checkpoint; return its local path."""
        snapshot = hub.fetch(
            self.weights_repo,
            [self.weights_file],
            licence=self.license,
            backbone=self.id,
            offline=offline,
        )
        return snapshot / self.weights_file

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        """Build the encoder (fp32, eval mode); with ``pretrained``, load the official weights."""
        from synnav_cli.backbones.esmc_model import ESMCEncoder

        if not pretrained:
            return ESMCEncoder(self.config).eval()
        path = self.fetch_weights(offline=offline)
        state = integrity.load_torch_state_dict(
            path, repo_id=self.weights_repo, filename=self.weights_file
        )
        # Built on the meta device, the encoder gets the checkpoint's (memory-mapped) tensors
        # instead of random ones it would throw away: at 600M that spares seconds of
        # initialisation and a second copy of the weights.
        with torch.device("meta"), no_weight_init():
            encoder = ESMCEncoder(self.config)
        # Strict apart from the masked-LM head; a mismatch is a UserError naming the keys.
        encoder.load_official_state_dict(state, assign=True)
        # Training and the random-init path both start from fp32, whatever the file stores.
        return encoder.float().eval()


@hookimpl
def register_backbones(register):
    register(
        ESMC(
            "esmc600m",
            "ESMC_600M",
            1152,
            "EvolutionaryScale/esmc-600m-2024-12",
            "data/weights/esmc_600m_2024_12_v0.pth",
            "Cambrian Non-Commercial",
            "ESM C 600M (default)",
        ),
        aliases=("esmc_600m", "esmc-600m"),
    )
    register(
        ESMC(
            "esmc300m", "ESMC_300M", 960, "EvolutionaryScale/esmc-300m-2024-12",
            "data/weights/esmc_300m_2024_12_v0.pth", "Cambrian Open",
            "ESM C 300M",
        ),
        aliases=("esmc_300m", "esmc-300m"),
    )  # fmt: skip
