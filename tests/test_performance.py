"""Precision, the memory model and token budgets, gradient checkpointing, attention paths per
device, and frozen-backbone training from the embedding cache. GPUs are mocked: these run on CPU."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_backbone import TinyBackbone

from synnav_cli.backbones import esmc_model
from synnav_cli.backbones.esmc_model import ESMC_600M, ESMC_TINY, ESMCEncoder
from synnav_cli.cli.main import cli
from synnav_cli.errors import UserError
from synnav_cli.plugins import get_backbone
from synnav_cli.runtime import hardware
from synnav_cli.train import config as train

CUDA = torch.device("cuda")
GB = 10**9


# --- precision ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "has_bf16", "expected"),
    [
        ("auto", True, "bf16"),  # Ampere and later
        ("auto", False, "fp16"),  # Volta/Turing: fp16 with loss scaling
        ("bf16", False, "fp16"),
        ("fp16", True, "fp16"),  # the origin's value is honoured as asked
        ("16-mixed", True, "fp16"),
        ("float32", True, "fp32"),
    ],
)
def test_precision_on_a_gpu(monkeypatch, requested, has_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: has_bf16)
    assert hardware.resolve_precision(CUDA, requested) == expected


@pytest.mark.parametrize("requested", ["auto", "bf16", "fp16", "fp32"])
def test_cpu_always_runs_fp32(requested):
    assert hardware.resolve_precision(torch.device("cpu"), requested) == "fp32"


def test_only_fp16_scales_the_loss_and_unknown_values_are_refused():
    cpu = torch.device("cpu")
    assert hardware.grad_scaler(cpu, "fp16").is_enabled()
    assert not hardware.grad_scaler(cpu, "bf16").is_enabled()
    assert not hardware.grad_scaler(cpu, "fp32").is_enabled()
    with pytest.raises(UserError, match="unknown precision"):
        hardware.normalise_precision("int8")


def test_origin_config_precision_values_keep_working(tmp_path):
    for value, expected in (("fp16", "fp16"), (True, "fp16"), (16, "fp16"), (False, "fp32")):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({"precision": value}))
        config = train.TrainConfig(**train.read_config_file(path))
        config.validate()
        assert config.precision == expected


# --- memory model and budgets --------------------------------------------------------------


def test_memory_model_of_esmc_600m_matches_the_architecture():
    model = hardware.memory_model(get_backbone("esmc600m"))
    assert (model.layers, model.width, model.ffn_hidden) == (36, 1152, 3072)
    assert model.params == pytest.approx(575e6, rel=0.01)
    # fp32 weights + bf16 copies + fp32 gradients + two AdamW moments: 18 B a parameter.
    assert model.fixed_bytes(training=True, frozen=False, precision="bf16") == model.params * 18
    assert model.fixed_bytes(training=False, frozen=False, precision="fp32") == model.params * 4
    per_token = model.bytes_per_token(training=True, frozen=False, precision="bf16")
    assert 2.0e6 < per_token < 2.6e6
    recompute = model.bytes_per_token(training=True, frozen=False, precision="bf16", checkpointing=True)
    assert recompute < per_token / 8
    assert model.bytes_per_token(training=False, frozen=False, precision="bf16") < 40_000


def test_memory_model_counts_a_plain_ffn_for_esm2():
    model = hardware.memory_model(get_backbone("esm2_650m"))
    assert model.params == pytest.approx(650e6, rel=0.05)


@pytest.mark.parametrize(("gigabytes", "origin_proteins"), [(80, 8), (40, 8), (32, 4), (24, 2)])
def test_budget_beats_the_origin_table_for_esmc_600m(gigabytes, origin_proteins):
    model = hardware.memory_model(get_backbone("esmc600m"))
    free = int(gigabytes * GB * 0.97)
    budget = hardware.plan_budget(CUDA, model, training=True, precision="bf16", min_tokens=1802, free_bytes=free)
    # The published batch of 8 proteins of the longest allowed length fits on every size (the
    # origin managed it on 40 GB and more only); from 32 GB on, typical batches (8 x ~550
    # residues) need no recomputation, on 24 GB half of one does.
    assert budget.max_tokens >= 8 * 1802 >= origin_proteins * 1802
    assert budget.recompute(8 * 552) == (gigabytes < 32)
    assert not budget.recompute(4 * 552)
    predict = hardware.plan_budget(CUDA, model, training=False, precision="bf16", free_bytes=free)
    assert predict.max_tokens == hardware.MAX_PREDICT_TOKENS > 18 * origin_proteins * 1802


def test_recomputation_only_for_batches_that_need_it():
    model = hardware.memory_model(get_backbone("esmc600m"))
    kwargs = dict(training=True, precision="bf16", min_tokens=1802, free_bytes=23 * GB)
    auto = hardware.plan_budget(CUDA, model, **kwargs)
    never = hardware.plan_budget(CUDA, model, checkpointing=False, **kwargs)
    always = hardware.plan_budget(CUDA, model, checkpointing=True, **kwargs)
    assert never.recompute_above is None and never.max_tokens < 8 * 1802
    assert auto.recompute_above == never.max_tokens and auto.max_tokens > 5 * never.max_tokens
    assert not auto.recompute(never.max_tokens) and auto.recompute(never.max_tokens + 1)
    assert always.recompute(1) and always.max_tokens == auto.max_tokens
    assert "gradient checkpointing for batches over" in auto.source and "GiB free" in auto.source
    roomy = hardware.plan_budget(CUDA, hardware.memory_model(get_backbone("esm2_8m")), training=True,
                                 free_bytes=78 * GB)
    assert roomy.recompute_above is None and roomy.max_tokens == hardware.MAX_TRAIN_TOKENS


def test_requested_budget_wins_and_cpu_uses_fixed_budgets(monkeypatch):
    model = hardware.memory_model(TinyBackbone())
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**30, 80 * GB))
    assert hardware.plan_budget(CUDA, model, training=True, requested=3000).max_tokens == 3000
    assert hardware.plan_budget(CUDA, model, training=True, requested=10, min_tokens=500).max_tokens == 500
    from_memory = hardware.plan_budget(CUDA, model, training=False)
    assert "1.0 GiB free" in from_memory.source
    cpu = torch.device("cpu")
    assert hardware.plan_budget(cpu, model, training=True).max_tokens == hardware.CPU_TRAIN_TOKENS
    assert hardware.plan_budget(cpu, model, training=True, frozen=True).max_tokens == hardware.CPU_PREDICT_TOKENS


def test_the_budget_is_reported_on_stderr(runner, small_dataset, tmp_path):
    result = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--out", str(tmp_path / "m"),
                                 "--epochs", "1", "--max-tokens", "777"])
    assert result.exit_code == 0, result.output
    assert "777 tokens a batch (--max-tokens)" in result.stderr


# --- gradient checkpointing and attention paths ---------------------------------------------


def test_gradient_checkpointing_switches_for_esmc_and_esm2():
    from synnav_cli.plugins import get_backbone

    switch = get_backbone("esmc600m").set_gradient_checkpointing
    encoder = ESMCEncoder(ESMC_TINY)
    assert switch(encoder, True) and encoder.gradient_checkpointing
    from transformers import EsmModel

    from synnav_cli.backbones.esm2 import ESM2_TINY, ESM2Encoder

    wrapped = ESM2Encoder(EsmModel(ESM2_TINY.config(), add_pooling_layer=False))
    switch = get_backbone("esm2_8m").set_gradient_checkpointing
    assert switch(wrapped, True)
    assert wrapped.esm.is_gradient_checkpointing
    assert switch(wrapped, False)
    assert not wrapped.esm.is_gradient_checkpointing
    assert not TinyBackbone().set_gradient_checkpointing(TinyBackbone().build_encoder(), True)


def test_gradient_checkpointing_option_reaches_the_config(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"grad_checkpoint": True}))
    assert train.read_config_file(path) == {"gradient_checkpointing": True}


@pytest.mark.parametrize(
    ("device", "dtype", "has_varlen", "expected"),
    [
        ("cpu", torch.float32, True, "split"),
        ("cpu", torch.bfloat16, True, "split"),
        ("cuda", torch.bfloat16, True, "varlen"),
        ("cuda", torch.float16, True, "varlen"),
        ("cuda", torch.bfloat16, False, "padded"),
        ("cuda", torch.float32, True, "padded"),
    ],
)
def test_default_attention_path_per_device(monkeypatch, device, dtype, has_varlen, expected):
    monkeypatch.setattr(esmc_model, "varlen_attn", object() if has_varlen else None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    encoder = ESMCEncoder(ESMC_TINY)
    assert encoder.resolved_attention_backend(torch.device(device), dtype) == expected
    encoder.attention_backend = "padded"
    assert encoder.resolved_attention_backend(torch.device(device), dtype) == "padded"


def test_packed_cpu_paths_equal_one_protein_at_a_time():
    from synnav_cli.backbones.esm_alphabet import ESM_VOCABULARY

    torch.manual_seed(0)
    encoder = ESMCEncoder(ESMC_TINY).eval()
    proteins = ["M", "MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY" * 7, "PEPTIDE"]
    with torch.inference_mode():
        alone = [encoder(*_ids(ESM_VOCABULARY.batch([p])))[0, 1:-1] for p in proteins]
        for backend in ("split", "nested", "padded"):
            encoder.attention_backend = backend
            batch = ESM_VOCABULARY.batch(proteins)
            together = encoder(batch.input_ids, batch.attention_mask)
            for row, (protein, reference) in enumerate(zip(proteins, alone)):
                torch.testing.assert_close(together[row, 1 : len(protein) + 1], reference, atol=2e-5, rtol=1e-4)
    assert ESMC_600M.n_layers == 36


def _ids(batch):
    return batch.input_ids, batch.attention_mask


# --- frozen backbone: embeddings from the cache ---------------------------------------------


def test_second_frozen_run_never_calls_the_encoder(runner, small_dataset, tmp_path, monkeypatch):
    calls = []
    real_build = TinyBackbone.build_encoder

    def counting_build(self, **kwargs):
        encoder = real_build(self, **kwargs)
        forward = encoder.forward

        def counted(input_ids, attention_mask):
            calls.append(input_ids.shape[0])
            return forward(input_ids, attention_mask)

        encoder.forward = counted
        return encoder

    monkeypatch.setattr(TinyBackbone, "build_encoder", counting_build)
    first = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--out", str(tmp_path / "a"),
                                "--freeze", "--epochs", "3"])
    assert first.exit_code == 0, first.output
    proteins = len(json.loads(small_dataset.read_text()))
    assert 0 < sum(calls) <= proteins

    calls.clear()
    second = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--out", str(tmp_path / "b"),
                                 "--freeze", "--epochs", "2", "--loss", "unweighted", "--lr", "1e-2"])
    assert second.exit_code == 0, second.output
    assert calls == []
    assert "the backbone was not run" in second.stderr
    meta = json.loads((tmp_path / "b" / "synnav-model.json").read_text())
    assert meta["encoder_frozen"] and meta["config"]["loss"] == "unweighted" and len(meta["history"]) == 2

    # The saved head works with the real encoder: predict builds it and gets probabilities.
    predicted = runner.invoke(cli, ["predict", "-m", str(tmp_path / "b"), "-"], input=">a\nMKVLAAGIVGLLLAAQPAMA\n")
    assert predicted.exit_code == 0 and calls == [1]


def test_a_budget_from_gpu_memory_is_reported_on_stderr(monkeypatch, capsys, tmp_path):
    """The scoring budget comes from the model's own backbone (its memory model, its precision)."""
    import launch

    from synnav_cli import modeldir
    from synnav_cli.scoring import load

    model_dir = launch.tiny_model_dir(tmp_path / "m")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * 2**30, 80 * 2**30))
    monkeypatch.setattr(load.distributed, "pick_device", lambda device: CUDA if device == "cuda" else torch.device(device))
    monkeypatch.setattr(load.hardware, "resolve_precision",
                        lambda device, precision: "bf16" if device.type == "cuda" else "fp32")
    monkeypatch.setattr(load, "load_model", lambda info, backbone, device, offline=False: None)
    loaded = load.open_model(modeldir.read_model_info(model_dir), device="cuda")
    err = capsys.readouterr().err
    tokens = loaded.runtime.max_tokens
    expected = hardware.plan_budget(CUDA, hardware.memory_model(loaded.backbone), training=False,
                                    precision="bf16", free_bytes=40 * 2**30).max_tokens
    assert tokens == expected
    assert f"Scoring: up to {tokens} tokens a batch (memory model: 40.0 GiB free" in err
    load.open_model(modeldir.read_model_info(model_dir), device="cpu", max_tokens=None)
    assert "Scoring" not in capsys.readouterr().err  # CPU budgets only with --verbose


def test_grad_checkpoint_option_is_recorded(runner, small_dataset, tmp_path):
    out = tmp_path / "m"
    result = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(small_dataset), "--out", str(out),
                                 "--epochs", "1", "--grad-checkpoint"])
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "synnav-model.json").read_text())
    assert meta["config"]["gradient_checkpointing"] is True
    assert "tiny cannot recompute activations" in result.stderr  # the tiny CNN has no checkpointing
