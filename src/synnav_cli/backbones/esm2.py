"""ESM2 backbones (Meta), run through transformers' EsmModel."""

from collections.abc import Sequence

from torch import nn

from synnav_cli.backbones.base import Backbone, BackboneUnavailable, TokenBatch
from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY
from synnav_cli.hookspecs import hookimpl


class ESM2(Backbone):
    license = "MIT"

    def __init__(self, id: str, d_model: int, weights_repo: str, description: str):
        self.id = id
        self.embedding_dim = d_model
        self.max_length = 1022
        self.weights_repo = weights_repo
        self.description = description

    def tokenize(self, sequences: Sequence[str]) -> TokenBatch:
        return ESM_VOCABULARY.batch(sequences)

    def build_encoder(self, *, pretrained: bool = True, offline: bool = False) -> nn.Module:
        raise BackboneUnavailable(f"backbone {self.id} is not available in this version of synnav")


@hookimpl
def register_backbones(register):
    register(
        ESM2("esm2_8m", 320, "facebook/esm2_t6_8M_UR50D", "ESM2 8M, 6 layers (baseline)"),
        aliases=("esm2-8m", "esm2_t6_8m_ur50d"),
    )
