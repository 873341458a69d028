"""What keeps ranks of a GPU run in step, checked with two gloo processes on CPU.

- the small agreements between ranks (stop flags, loss sums, budgets, objects) on a process group
  built the way the CUDA path builds it, where nccl serves CUDA tensors only;
- two ranks that see different free memory build the same batch list;
- two ranks that split their rows into different numbers of parts still take part in one gradient
  all-reduce each, and end with the whole batch's gradient;
- parameters that get no gradient (ESM2's contact head) are frozen before DistributedDataParallel
  sees them.

Each test spawns two processes (a few seconds each); the full ``synnav train`` under torchrun is in
tests/test_distributed.py.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from synnav_cli.runtime import distributed, hardware
from synnav_cli.scoring import batches
from synnav_cli.scoring.score import Runtime
from synnav_cli.train import ddp, steps
from synnav_cli.train.setup import agreed_budget

WORLD = 2


def as_on_cpu(spec: str) -> str:
    """``spec`` with nccl replaced by a gloo that, like nccl, serves CUDA tensors only.

    A plain "nccl" (the spec before mixed groups) becomes "cuda:gloo": a CPU tensor then fails
    with nccl's own error, "No backend type associated with device type cpu".
    """
    parts = []
    for part in spec.split(","):
        device, _, backend = part.rpartition(":")
        if backend == "nccl":
            parts.append(f"{device or 'cuda'}:gloo")
        else:
            parts.append(part)
    return ",".join(parts)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, port: int, spec: str, body, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    # A short timeout: ranks that fall out of step fail the test instead of hanging it.
    dist.init_process_group(spec, rank=rank, world_size=WORLD, timeout=timedelta(seconds=30))
    try:
        results[rank] = body(rank)
    except Exception as error:  # noqa: BLE001 - reported to the test in the parent
        results[rank] = f"error: {type(error).__name__}: {error}"
    finally:
        dist.destroy_process_group()


def run_ranks(body, spec: str = "gloo") -> list:
    """``body(rank)`` on two processes joined in one group; each rank's result, in rank order."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_entry, args=(_free_port(), spec, body, results), nprocs=WORLD, join=True)
        return [results.get(r) for r in range(WORLD)]


# --- agreements on the GPU path's process group ----------------------------------------------------


def _agreements(rank: int) -> dict:
    return {
        "any": distributed.any_rank(rank == 1),
        "none": distributed.any_rank(False),
        "sum": distributed.sum_across(rank + 0.5),
        "min": distributed.min_across(100 - 30 * rank),
        "broadcast": distributed.broadcast(f"from {rank}"),
        "gather": distributed.gather(rank * 10),
        "barrier": distributed.barrier() is None,
    }


@pytest.mark.slow
def test_rank_agreements_work_on_the_group_a_gpu_run_creates():
    spec = as_on_cpu(distributed.backend_spec(use_cuda=True))
    assert spec != "gloo"  # the emulation keeps nccl's restriction to CUDA tensors
    for result in run_ranks(_agreements, spec):
        assert result == {"any": True, "none": False, "sum": 2.0, "min": 70,
                          "broadcast": "from 0", "gather": [0, 10], "barrier": True}, result


def test_a_plain_nccl_group_would_refuse_cpu_values():
    """The emulation itself: a group with nccl alone cannot reduce a CPU tensor."""
    assert as_on_cpu("nccl") == "cuda:gloo"
    assert as_on_cpu("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:gloo"
    assert distributed.backend_spec(use_cuda=False) == "gloo"


# --- the batch budget ---------------------------------------------------------------------------------

LENGTHS = [30, 200, 450, 90, 510, 60, 300, 120, 40, 250, 380, 75] * 4


def _planned_batches(rank: int) -> dict:
    model = hardware.MemoryModel(params=8_000_000, layers=6, width=320, ffn_hidden=1280)
    # Rank 1 shares its GPU with another job: a third of rank 0's free memory.
    free = (3 << 30) if rank == 0 else (1 << 30)
    budget = hardware.plan_budget(torch.device("cuda"), model, training=True, precision="bf16",
                                  min_tokens=512, free_bytes=free)
    own = budget.max_tokens
    budget = agreed_budget(budget)
    order = batches.training_batches(LENGTHS, budget.max_tokens, 8, np.random.default_rng(0))
    return {"own": own, "agreed": budget.max_tokens, "order": [list(map(int, b)) for b in order]}


@pytest.mark.slow
def test_ranks_with_different_free_memory_build_the_same_batches():
    zero, one = run_ranks(_planned_batches)
    assert not isinstance(zero, str) and not isinstance(one, str), (zero, one)
    assert zero["own"] > one["own"]  # they did plan differently
    assert zero["agreed"] == one["agreed"] == one["own"]
    assert zero["order"] == one["order"]


# --- parts of a step ----------------------------------------------------------------------------------

ROWS = torch.Generator().manual_seed(0)
INPUTS = torch.randn(12, 8, generator=ROWS)
TARGETS = torch.randn(12, 1, generator=ROWS)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))


def _accumulated_gradient(rank: int) -> list:
    model = _net()
    net = ddp.wrap(model, torch.device("cpu"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    mine = list(range(rank, 12, WORLD))
    # Rank 0's rows need three parts, rank 1's one: a budget of 2 tokens a row against 100.
    lengths = [2] * len(mine)
    runtime = Runtime(torch.device("cpu"), "fp32", max_tokens=4 if rank == 0 else 100)

    def backward(part: list[int]) -> torch.Tensor:
        rows = [mine[p] for p in part]
        # The mean over the global batch of 12 rows; DDP averages over ranks, hence * WORLD.
        loss = ((net(INPUTS[rows]) - TARGETS[rows]) ** 2).sum() / 12 * WORLD
        loss.backward()
        return loss.detach()

    parts = len(batches.inference_batches(lengths, runtime.max_tokens))
    steps.accumulate(backward, lengths, optimizer, runtime, net.no_sync)
    return {"parts": parts, "grad": [p.grad.tolist() for p in model.parameters()]}


@pytest.mark.slow
def test_ranks_that_split_a_step_differently_stay_in_step():
    zero, one = run_ranks(_accumulated_gradient)
    assert not isinstance(zero, str) and not isinstance(one, str), (zero, one)
    assert (zero["parts"], one["parts"]) == (3, 1)
    model = _net()
    ((model(INPUTS) - TARGETS) ** 2).mean().backward()
    for expected, a, b in zip(model.parameters(), zero["grad"], one["grad"], strict=True):
        assert torch.allclose(torch.tensor(a), expected.grad, atol=1e-6)
        assert a == b


# --- parameters without a gradient ------------------------------------------------------------------


class WithAnUnusedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 2)

    def forward(self, x):
        return self.used(x)


def test_parameters_without_a_gradient_are_frozen_and_the_rest_untouched():
    model, batch = WithAnUnusedHead(), torch.randn(3, 4)
    before = torch.get_rng_state()
    frozen = ddp.freeze_unused(model, batch, hardware.autocast(torch.device("cpu"), "fp32"))
    assert frozen == ["unused.weight", "unused.bias"]
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, False]
    assert all(p.grad is None for p in model.parameters())
    assert model.training and torch.equal(torch.get_rng_state(), before)


def test_esm2_trains_every_parameter_but_its_contact_head(monkeypatch):
    """transformers' EsmModel builds a contact head the pooled output never passes through."""
    from synnav_cli.model import LocalizationModel
    from synnav_cli.plugins import get_backbone

    monkeypatch.setenv("SYNNAV_TEST_TINY_BACKBONES", "1")  # random weights, tiny architecture
    backbone = get_backbone("esm2_8m")
    encoder = backbone.build_encoder(pretrained=False)
    model = LocalizationModel(encoder, backbone.embedding_dim, 6)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "contact_head" in n)
    batch = backbone.tokenize(["MKTAYIAKQRQISFVKSHFSRQ"])
    assert ddp.freeze_unused(model, batch, hardware.autocast(torch.device("cpu"), "fp32")) == []


def test_the_allocator_setting_is_the_users_when_given(monkeypatch):
    from synnav_cli.runtime.allocator import prefer_expandable_segments

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "backend:cudaMallocAsync")
    prefer_expandable_segments()
    assert "PYTORCH_CUDA_ALLOC_CONF" not in os.environ
    monkeypatch.delenv("PYTORCH_ALLOC_CONF")
    prefer_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
