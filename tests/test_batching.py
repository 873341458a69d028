"""Token-budget batching, input order, and the out-of-memory backoff (simulated on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_backbone import TinyBackbone

from synnav_cli.errors import UserError
from synnav_cli.model import LocalizationModel, masked_bce
from synnav_cli.scoring import batches as batching
from synnav_cli.scoring.score import Runtime, run_batches, score_sequences
from synnav_cli.train.loop import accumulate as _accumulate

LENGTHS = [int(x) for x in np.random.default_rng(3).integers(5, 400, size=97)]


def cost(index, lengths=LENGTHS) -> int:
    return batching.padded_cost([lengths[i] for i in index])


@pytest.mark.parametrize("budget", [400, 1000, 5000])
def test_inference_batches_cover_everything_within_budget_longest_first(budget):
    batches = batching.inference_batches(LENGTHS, budget)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert all(cost(b) <= budget for b in batches)
    firsts = [LENGTHS[b[0]] for b in batches]
    assert firsts == sorted(firsts, reverse=True) and firsts[0] == max(LENGTHS)
    # Sorted batches waste far less than batches in input order with the same sizes.
    sizes = iter([len(b) for b in batches])
    in_order, start = [], 0
    for size in sizes:
        in_order.append(list(range(start, start + size)))
        start += size
    real = sum(LENGTHS)
    assert sum(map(cost, batches)) - real <= 0.5 * (sum(map(cost, in_order)) - real)


def test_a_protein_over_the_budget_is_alone_and_batch_size_caps_count():
    batches = batching.inference_batches([10, 500, 10, 10, 10], 100, max_batch_size=2)
    assert [1] in batches
    assert all(len(b) <= 2 for b in batches)


def test_training_batches_shuffle_each_epoch_within_budget():
    rng = np.random.default_rng(0)
    first = batching.training_batches(LENGTHS, 1200, 8, rng)
    second = batching.training_batches(LENGTHS, 1200, 8, rng)
    for batches in (first, second):
        assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
        assert all(cost(b) <= 1200 and len(b) <= 8 for b in batches)
    assert first != second


def test_scores_come_back_in_input_order_and_equal_one_at_a_time():
    backbone = TinyBackbone()
    torch.manual_seed(0)
    model = LocalizationModel(backbone.build_encoder(), backbone.embedding_dim, 3)
    rng = np.random.default_rng(1)
    sequences = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=n)) for n in (30, 3, 120, 7, 64, 64, 2)]
    batched = score_sequences(model, backbone, sequences, Runtime(torch.device("cpu"), "fp32", 256))
    alone = np.concatenate([score_sequences(model, backbone, [s], Runtime(torch.device("cpu"), "fp32", 256))
                            for s in sequences])
    np.testing.assert_allclose(batched, alone, atol=1e-6)


class OutOfMemoryAbove:
    """A batch whose padded size exceeds ``limit`` tokens fails as CUDA would."""

    def __init__(self, lengths, limit: int) -> None:
        self.lengths, self.limit, self.failures = lengths, limit, 0

    def __call__(self, index):
        if cost(index, self.lengths) > self.limit:
            self.failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(index)


def test_out_of_memory_retries_the_same_batch_with_half_the_budget(capsys):
    runtime = Runtime(torch.device("cpu"), "fp32", 8000)
    work = OutOfMemoryAbove(LENGTHS, 1500)
    seen = [i for index, result in run_batches(LENGTHS, runtime, work) for i in result]
    assert sorted(seen) == list(range(len(LENGTHS)))  # nothing lost, nothing twice
    assert work.failures >= 1
    assert runtime.max_tokens <= 1500  # the smaller budget holds for the rest of the run
    first_cost = cost(batching.inference_batches(LENGTHS, 8000)[0])
    assert f"retrying it with up to {first_cost // 2} tokens" in capsys.readouterr().err


def test_out_of_memory_on_one_protein_is_a_clear_error_and_other_errors_pass_through():
    runtime = Runtime(torch.device("cpu"), "fp32", 8000)
    with pytest.raises(UserError, match="single protein of 399"):
        list(run_batches([399], runtime, OutOfMemoryAbove([399], 100)))

    def broken(index):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(run_batches([10, 20], runtime, broken))


def test_training_backoff_accumulates_the_whole_batch_gradient():
    backbone = TinyBackbone()
    torch.manual_seed(0)
    model = LocalizationModel(backbone.build_encoder(), backbone.embedding_dim, 2).eval()
    sequences = ["MKTAYIAKQR" * 4, "ACDEFG", "W" * 25, "PEPTIDE" * 3]
    lengths = [len(s) + 2 for s in sequences]
    targets = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [1.0, 1.0], [0.0, 0.0]])
    known = int((~torch.isnan(targets)).sum())
    pos_weight = torch.ones(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def gradients():
        return [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    masked_bce(model(backbone.tokenize(sequences)), targets, pos_weight).backward()
    whole = gradients()

    calls = []

    def backward(part):
        calls.append(len(part))
        if cost(part, lengths) > 60:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        part_targets = targets[part]
        share = masked_bce(model(backbone.tokenize([sequences[p] for p in part])), part_targets, pos_weight)
        share = share * int((~torch.isnan(part_targets)).sum()) / known
        share.backward()
        return share.detach()

    model.zero_grad()
    runtime = Runtime(torch.device("cpu"), "fp32", 10_000)
    _accumulate(backward, lengths, optimizer, runtime)
    assert calls[0] == 4 and len(calls) > 2  # the whole batch failed, then it ran in parts
    for a, b in zip(whole, gradients()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_a_batch_is_each_protein_encoded_and_padded():
    """Vocabulary.batch tokenizes a whole batch at once; it must equal encoding one by one."""
    import random

    import torch

    from synnav_cli.backbones.base import Vocabulary
    from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY

    bare = Vocabulary([*"ACDEFGHIKLMNPQRSTVWY", "<pad>", "X"], pad="<pad>", unk="X")
    rng = random.Random(0)
    for vocabulary in (ESM_VOCABULARY, bare):
        for _ in range(50):
            sequences = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWYXBZUO") for _ in range(rng.randint(1, 40)))
                         for _ in range(rng.randint(1, 6))]
            batch = vocabulary.batch(sequences)
            encoded = [vocabulary.encode(s) for s in sequences]
            width = max(len(e) for e in encoded)
            assert batch.input_ids.shape == batch.attention_mask.shape == (len(sequences), width)
            lead = int(vocabulary.cls_id is not None)
            for row, (sequence, ids) in enumerate(zip(sequences, encoded, strict=True)):
                assert torch.equal(batch.input_ids[row, : len(ids)], ids)
                assert (batch.input_ids[row, len(ids):] == vocabulary.pad_id).all()
                assert batch.attention_mask[row].tolist() == [i < len(ids) for i in range(width)]
                assert batch.residue_mask[row].tolist() == [lead <= i < lead + len(sequence) for i in range(width)]
    assert ESM_VOCABULARY.batch([]).input_ids.shape[0] == 0
