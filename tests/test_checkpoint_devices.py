"""Resuming training on other hardware: a checkpoint written on 8 GPUs resumes on 1, and a run saved
in bf16 (no loss scaling) resumes where fp16 resolves (an A100's run on a V100)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import launch
import pytest
import torch
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)
from test_safety import train_args

from synnav_cli.cli.main import cli
from synnav_cli.runtime import hardware
from synnav_cli.train import checkpoint
from synnav_cli.train import loop as training

# The fake machine's 8 GPUs make torch.random.fork_rng (the tiny backbone's weights) say so.
pytestmark = pytest.mark.filterwarnings("ignore:CUDA reports that you have:UserWarning")


class FakeGPUs:
    """torch.cuda's generator functions on a machine of ``count`` GPUs; as with torch's own
    ``default_generators``, a GPU past the count is an IndexError."""

    def __init__(self, count: int, current: int = 0, seed: int = 0) -> None:
        self.states = [torch.full((16,), seed + i, dtype=torch.uint8) for i in range(count)]
        self.current = current

    def index(self, device) -> int:
        if isinstance(device, int):
            return device
        device = torch.device(device)
        return self.current if device.index is None else device.index

    def get_rng_state(self, device="cuda") -> torch.Tensor:
        return self.states[self.index(device)].clone()

    def set_rng_state(self, state: torch.Tensor, device="cuda") -> None:
        self.states[self.index(device)] = state.clone()

    def install(self, monkeypatch) -> FakeGPUs:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        for module in (torch.cuda, torch.cuda.random):  # get/set_rng_state_all call the latter's
            monkeypatch.setattr(module, "device_count", lambda: len(self.states))
            monkeypatch.setattr(module, "current_device", lambda: self.current)
            monkeypatch.setattr(module, "get_rng_state", self.get_rng_state)
            monkeypatch.setattr(module, "set_rng_state", self.set_rng_state)
        return self


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    copy = tmp_path / "small.json"
    copy.write_bytes((launch.TESTS / "data" / "small.json").read_bytes())
    return copy


def _stopped(runner, monkeypatch, data: Path, out: Path, steps: int = 5) -> Path:
    """A training workspace stopped by SIGTERM during its ``steps``-th step; returns it."""
    original, taken = training.accumulate, []

    def accumulate(*args, **kwargs):
        taken.append(1)
        if len(taken) == steps:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(training, "accumulate", accumulate)
        one_error_line(runner.invoke(cli, train_args(data, out)), "stopped at step", "--resume")
    workspace = out.with_name(out.name + ".partial")
    assert checkpoint.exists(workspace)
    return workspace


def test_only_the_gpu_this_process_trains_on_is_saved(monkeypatch):
    gpus = FakeGPUs(8, current=3).install(monkeypatch)
    assert torch.equal(checkpoint.rng_state()["cuda"], gpus.states[3])
    assert torch.equal(checkpoint.rng_state(torch.device("cuda", 5))["cuda"], gpus.states[5])


def test_a_checkpoint_written_on_8_gpus_restores_on_1(tmp_path, monkeypatch):
    eight = FakeGPUs(8, seed=10).install(monkeypatch)
    checkpoint.save(tmp_path, {"rng": checkpoint.rng_state()})
    one = FakeGPUs(1, seed=100).install(monkeypatch)
    checkpoint.restore_rng_state(checkpoint.load(tmp_path)["rng"])
    assert torch.equal(one.states[0], eight.states[0])


@pytest.mark.parametrize("current", [0, 5])
def test_an_older_checkpoint_of_every_gpu_restores_on_fewer(monkeypatch, current):
    """Checkpoints written before held every visible GPU's state: this GPU's, where there is one,
    is put back; on a GPU the checkpoint has no state for, nothing is."""
    saved = FakeGPUs(4, seed=10).states
    state = {**checkpoint.rng_state(), "cuda": saved}
    gpus = FakeGPUs(8, current=current, seed=100).install(monkeypatch)
    checkpoint.restore_rng_state(state, torch.device("cuda"))  # --device cuda: the current GPU
    expected = saved[current] if current < len(saved) else FakeGPUs(8, seed=100).states[current]
    assert torch.equal(gpus.states[current], expected)


def test_training_stopped_on_8_gpus_resumes_on_1(runner, tmp_path, small_dataset, monkeypatch):
    FakeGPUs(8).install(monkeypatch)
    workspace = _stopped(runner, monkeypatch, small_dataset, tmp_path / "model")
    saved = checkpoint.load(workspace)["rng"]["cuda"]
    FakeGPUs(1, seed=50).install(monkeypatch)
    resumed = runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert saved.shape == (16,)  # one GPU's state
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_a_bf16_run_resumes_where_fp16_resolves(runner, tmp_path, small_dataset, monkeypatch):
    """A run without loss scaling (its scaler state is empty, as bf16's is) resumed with fp16's."""
    workspace = _stopped(runner, monkeypatch, small_dataset, tmp_path / "model")
    assert checkpoint.load(workspace)["scaler"] == {}
    monkeypatch.setattr(hardware, "grad_scaler", lambda device, precision: torch.amp.GradScaler("cpu"))
    resumed = runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert "damaged" not in resumed.output
    notices = [line for line in resumed.output.splitlines() if "loss scaling" in line]
    assert notices == ["Warning: this run was saved without fp16 loss scaling (bf16 or fp32) and resumes "
                       "in fp16 here; loss scaling starts afresh"]
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_an_fp16_run_resumes_in_bf16_and_says_so(runner, tmp_path, small_dataset, monkeypatch):
    with monkeypatch.context() as fp16:
        fp16.setattr(hardware, "grad_scaler", lambda device, precision: torch.amp.GradScaler("cpu"))
        workspace = _stopped(runner, fp16, small_dataset, tmp_path / "model")
    assert checkpoint.load(workspace)["scaler"]["scale"] > 0
    resumed = runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu", "-q"])
    assert resumed.exit_code == 0, resumed.output
    assert "saved in fp16 and resumes in bf16 or fp32 here" in resumed.output
