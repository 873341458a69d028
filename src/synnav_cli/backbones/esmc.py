"""ESM C backbones (EvolutionaryScale, December 2024)."""

from collections.abc import Sequence

from torch import nn

from synnav_cli.backbones.base import Backbone, BackboneUnavailable, TokenBatch
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.hookspecs import hookimpl


class ESMC(Backbone):
    def __init__(self, id: str, d_model: int, weights_repo: str, license: str, description: str):
        self.id = id
        self.embedding_dim = d_model
        self.max_length = 2048
        self.weights_repo = weights_repo
        self.license = license
        self.description = description

    def tokenize(self, sequences: Sequence[str]) -> TokenBatch:
        return ESM_VOCABULARY.batch(sequences)

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        raise BackboneUnavailable(f"backbone {self.id} is not available in this version of synnav")


@hookimpl
def register_backbones(register):
    register(
        ESMC(
            "esmc600m", 1152, "EvolutionaryScale/esmc-600m-2024-12",
            "Cambrian Non-Commercial", "ESM C 600M (default)",
        ),
        aliases=("esmc_600m", "esmc-600m"),
    )  # fmt: skip
