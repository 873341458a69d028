import numpy as np
import pytest
import torch

from synnav_cli.errors import UserError
from synnav_cli.model import masked_bce, masked_mean, positive_weights

ORIGIN_LABELS = ["cytosol", "ER", "mitochondrion", "nucleus", "excitatory synapse", "inhibitory synapse"]
ORIGIN_POSITIVES = [1806, 680, 724, 1319, 413, 512]
ORIGIN_PROTEINS = 6627


def origin_label_matrix() -> np.ndarray:
    labels = np.zeros((ORIGIN_PROTEINS, len(ORIGIN_LABELS)), dtype=np.float32)
    for j, positives in enumerate(ORIGIN_POSITIVES):
        labels[:positives, j] = 1
    return labels


def test_a2_preset_reproduces_origin_weights():
    weights = positive_weights(origin_label_matrix(), ORIGIN_LABELS, "a2")
    assert [round(float(w), 2) for w in weights] == [2.67, 8.75, 8.15, 4.02, 120.37, 119.43]


def test_a2_matches_synapse_labels_case_insensitively():
    names = ["Cytosol", "Excitatory Synapse"]
    labels = np.array([[1, 1], [0, 0], [0, 0], [0, 0]], dtype=np.float32)
    assert positive_weights(labels, names, "a2").tolist() == [3.0, 24.0]


def test_balanced_and_unweighted_presets():
    labels = origin_label_matrix()
    balanced = positive_weights(labels, ORIGIN_LABELS, "balanced")
    assert round(float(balanced[4]), 2) == round((6627 - 413) / 413, 2)
    assert positive_weights(labels, ORIGIN_LABELS, "unweighted").tolist() == [1.0] * 6
    with pytest.raises(UserError):
        positive_weights(labels, ORIGIN_LABELS, "bogus")


def test_unknown_labels_are_not_counted_as_negatives():
    labels = np.array([[1], [0], [np.nan], [np.nan], [np.nan]], dtype=np.float32)
    assert positive_weights(labels, ["ER"], "balanced").tolist() == [1.0]


def test_masked_bce_ignores_unknown_targets():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    known = torch.tensor([[1.0, float("nan")], [0.0, float("nan")]])
    pos_weight = torch.tensor([2.0, 5.0])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, :1], known[:, :1], pos_weight=pos_weight[:1]
    )
    assert torch.allclose(masked_bce(logits, known, pos_weight), expected)
    # Changing the logit of an unknown label changes nothing.
    logits2 = logits.clone()
    logits2[:, 1] = -50
    assert torch.allclose(masked_bce(logits2, known, pos_weight), expected)


def test_masked_bce_has_no_gradient_on_unknown_labels():
    logits = torch.zeros(2, 2, requires_grad=True)
    targets = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
    masked_bce(logits, targets, torch.ones(2)).backward()
    assert logits.grad[0, 1] == 0
    assert logits.grad[1, 1] != 0


def test_masked_mean_excludes_padding_and_specials():
    hidden = torch.tensor([[[1.0], [2.0], [4.0], [100.0]], [[7.0], [3.0], [-50.0], [-50.0]]])
    mask = torch.tensor([[False, True, True, False], [False, True, False, False]])
    assert masked_mean(hidden, mask).squeeze(-1).tolist() == [3.0, 3.0]
