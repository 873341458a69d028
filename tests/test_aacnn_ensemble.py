"""aacnn-ensemble: three aacnn networks and a logistic regression joined into one synnav model."""

from __future__ import annotations

import pytest
import torch

from synnav_cli.backbones.aacnn import GlobalFeatures
from synnav_cli.backbones.aacnn_ensemble import MEMBERS, Regression, ensemble_state
from synnav_cli.model import LocalizationModel
from synnav_cli.plugins import get_backbone

SEQUENCES = [
    "MKWVTFISLLFLFSSAYSRGVFRRDAHKSEVAHRFKDLGEENFKALVLIAFAQYLQQCPFEDHVKLVNEVTEFAKTCVADESAENCDKS",
    "MSDEEARQSGGSSQAGVVTVSDVQELMRRKEEIEAQIKANYDVLESQKGIGMNEPLVDCEGYPRSDVDLYQVRTARHNIICL",
    "MLSRAVCGTSRQLAPVLGYLGSRQKHSLPD",
]
LABELS = 6


def _network(seed: int) -> LocalizationModel:
    backbone = get_backbone("aacnn")
    torch.manual_seed(seed)
    model = LocalizationModel(backbone.build_encoder(pretrained=False), backbone.embedding_dim, LABELS)
    with torch.no_grad():
        model.encoder.gate.weight.normal_()  # a non-trivial implausibility score
        model.head.linear.weight.normal_(std=0.3)
        model.head.linear.bias.normal_()
    return model.eval()


def _regression(seed: int) -> Regression:
    generator = torch.Generator().manual_seed(seed)
    size = GlobalFeatures.size
    return Regression(
        weight=torch.randn(LABELS, size, generator=generator, dtype=torch.float64),
        bias=torch.randn(LABELS, generator=generator, dtype=torch.float64),
        mean=torch.rand(size, generator=generator, dtype=torch.float64),
        scale=torch.rand(size, generator=generator, dtype=torch.float64) + 0.5,
    )


@pytest.mark.parametrize("network_weight", [1.0, 0.4, 0.0])
def test_joined_model_averages_the_members_logits(network_weight):
    networks = [_network(seed) for seed in range(MEMBERS)]
    regression = _regression(7)
    backbone = get_backbone("aacnn-ensemble")
    joined = LocalizationModel(backbone.build_encoder(pretrained=False), backbone.embedding_dim, LABELS)
    state = ensemble_state([n.state_dict() for n in networks], regression, network_weight)
    joined.load_state_dict(state, strict=True)  # every tensor placed, none left over
    joined.eval()

    batch = backbone.tokenize(SEQUENCES)
    with torch.no_grad():
        got = joined(batch)
        network_mean = torch.stack([n(batch) for n in networks]).mean(dim=0)
        descriptors = GlobalFeatures()(batch.input_ids, batch.attention_mask).double()
        standardised = (descriptors - regression.mean) / regression.scale
        regression_logits = standardised @ regression.weight.T + regression.bias
    expected = network_weight * network_mean.double() + (1 - network_weight) * regression_logits
    assert torch.allclose(got.double(), expected, atol=1e-4)


def test_wrong_member_count_or_weight_is_refused():
    networks = [_network(seed).state_dict() for seed in range(MEMBERS)]
    with pytest.raises(ValueError, match="networks"):
        ensemble_state(networks[:2], _regression(0), 0.5)
    with pytest.raises(ValueError, match="network_weight"):
        ensemble_state(networks, _regression(0), 1.5)


def test_fingerprint_names_the_architecture():
    assert get_backbone("aacnn").fingerprint() == "aacnn-v2"
    assert get_backbone("aacnn-ensemble").fingerprint() == f"aacnn-v2-x{MEMBERS}"
