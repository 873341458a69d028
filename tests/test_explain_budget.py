"""predict --explain: passes sized at a training step's cost per token, retried smaller on out of memory."""

from __future__ import annotations

import launch
import numpy as np
import pytest
import torch

from synnav_cli.cli.main import cli
from synnav_cli.errors import UserError
from synnav_cli.model import LocalizationModel
from synnav_cli.plugins import get_backbone
from synnav_cli.predict import explain
from synnav_cli.runtime import hardware
from synnav_cli.scoring.load import load_for_scoring

SEQUENCE = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"
STEPS = 10
OUT_OF_MEMORY = "CUDA out of memory. Tried to allocate 2.00 GiB"


@pytest.fixture
def loaded(tmp_path):
    return load_for_scoring(str(launch.tiny_model_dir(tmp_path / "model")), device="cpu")


def _passes(loaded, fail_first: int = 0) -> list[int]:
    """The path points of each pass the model runs (recorded on the model); the first
    ``fail_first`` passes raise a CUDA out-of-memory error."""
    sizes: list[int] = []
    original = loaded.model.forward

    def forward(batch):
        sizes.append(batch.input_ids.shape[0])
        if len(sizes) <= fail_first:
            raise RuntimeError(OUT_OF_MEMORY)
        return original(batch)

    loaded.model.forward = forward
    return sizes


def _free_for(loaded, steps: int) -> int:
    """Free bytes in which exactly ``steps`` path points of SEQUENCE fit, by the memory model."""
    model = hardware.memory_model(loaded.backbone, loaded.model.encoder)
    per_token = model.bytes_per_token(training=True, frozen=False, precision=loaded.runtime.precision)
    tokens = loaded.backbone.tokens(len(SEQUENCE))
    return int(steps * tokens * per_token / hardware.MEMORY_FRACTION) + 1


def test_a_pass_costs_a_training_steps_memory_per_token():
    """ESM C 600M in bf16, a 500-residue protein: 32 steps need about 37 GB, so 24 GiB holds fewer."""
    model = hardware.memory_model(get_backbone("esmc600m"))
    tokens = get_backbone("esmc600m").tokens(500)
    per_token = model.bytes_per_token(training=True, frozen=False, precision="bf16")
    assert 36e9 < 32 * tokens * per_token < 38e9
    for gib in (16, 24, 40, 80):
        free = gib * 2**30
        steps = explain.explain_tokens(model, free, "bf16") // tokens
        copies = 2 * model.params  # autocast's bf16 weights, made during the pass
        assert steps * tokens * per_token + copies <= free * hardware.MEMORY_FRACTION
        assert (steps + 1) * tokens * per_token + copies > free * hardware.MEMORY_FRACTION
    assert explain.explain_tokens(model, 24 * 2**30, "bf16") // tokens < 32 <= (
        explain.explain_tokens(model, 80 * 2**30, "bf16") // tokens
    )
    assert explain.explain_tokens(model, 2**30, "bf16") == 0  # not even the weights' copies


def test_passes_hold_what_fits_and_add_up_to_one_pass(loaded, monkeypatch):
    sizes = _passes(loaded)
    whole = explain.attribute(loaded, SEQUENCE, [0, 1], steps=STEPS)
    assert sizes == [STEPS]  # the CPU scoring budget holds every step at once
    assert np.abs(whole).max() > 1e-4
    sizes.clear()
    monkeypatch.setattr(explain, "_free_bytes", lambda device: _free_for(loaded, 3))
    split = explain.attribute(loaded, SEQUENCE, [0, 1], steps=STEPS)
    assert sizes == [3, 3, 3, 1]
    np.testing.assert_allclose(split, whole, rtol=1e-5, atol=1e-7)


def test_a_pass_that_runs_out_of_memory_is_retried_smaller(loaded, capsys):
    whole = explain.attribute(loaded, SEQUENCE, [0, 1], steps=STEPS)
    tokens = loaded.backbone.tokens(len(SEQUENCE))
    sizes = _passes(loaded, fail_first=1)
    retried = explain.attribute(loaded, SEQUENCE, [0, 1], steps=STEPS)
    # The failed pass's tokens, halved: 5 steps a pass from then on.
    assert sizes == [STEPS, 5, 5]
    assert loaded.runtime.max_tokens == STEPS * tokens // 2
    np.testing.assert_allclose(retried, whole, rtol=1e-5, atol=1e-7)
    warning = capsys.readouterr().err.strip()
    assert len(warning.splitlines()) == 1 and "out of memory" in warning


def test_one_step_that_does_not_fit_is_one_line(loaded):
    sizes = _passes(loaded, fail_first=STEPS)
    with pytest.raises(UserError, match=r"^--explain: out of memory on one integration step of a protein of 33"):
        explain.attribute(loaded, SEQUENCE, [0], steps=STEPS)
    assert sizes[-1] == 1


def test_other_errors_are_not_retried(loaded):
    def broken(batch):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    loaded.model.forward = broken
    with pytest.raises(RuntimeError, match="shapes"):
        explain.attribute(loaded, SEQUENCE, [0], steps=STEPS)


def test_predict_explain_out_of_memory_is_one_line(runner, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    model_dir = launch.tiny_model_dir(tmp_path / "model")
    fasta = tmp_path / "in.fasta"
    fasta.write_text(f">P1\n{SEQUENCE}\n")
    original = LocalizationModel.forward

    def forward(self, batch):
        if torch.is_grad_enabled():  # explaining; scoring runs without gradients
            raise RuntimeError(OUT_OF_MEMORY)
        return original(self, batch)

    monkeypatch.setattr(LocalizationModel, "forward", forward)
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model_dir), "--device", "cpu",
                                 "--explain", str(tmp_path / "explain")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: --explain: out of memory on one")
