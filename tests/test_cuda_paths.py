"""The CUDA paths on CPU: precision and attention per GPU generation (mocked devices), what counts
as out of memory, the failed batch released before the cache is freed, and fp16 overflow re-run
in fp32."""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch

from synnav_cli.backbones import esmc_model
from synnav_cli.backbones.esmc_model import ESMC_TINY, ESMCEncoder
from synnav_cli.runtime import hardware

CUDA = torch.device("cuda")
HALF = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mock_gpu(monkeypatch, capability: tuple[int, int], *, torch_knows_emulation: bool = True):
    """A CUDA GPU of ``capability``. Every CUDA GPU passes torch's bf16 check when emulation
    counts (a bf16 tensor can be made on a V100); torch releases without ``including_emulation``
    answered by capability alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    if torch_knows_emulation:

        def is_bf16_supported(including_emulation: bool = True) -> bool:
            return including_emulation or capability >= (8, 0)

    else:

        def is_bf16_supported() -> bool:
            return True

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(esmc_model, "varlen_attn", object())  # a torch with varlen attention


GPUS = [
    ((7, 0), "fp16", "padded"),  # V100
    ((7, 5), "fp16", "padded"),  # T4, RTX 20xx
    ((8, 0), "bf16", "varlen"),  # A100
    ((9, 0), "bf16", "varlen"),  # H100, H200
]


@pytest.mark.parametrize("torch_knows_emulation", [True, False])
@pytest.mark.parametrize(("capability", "precision", "attention"), GPUS)
def test_auto_precision_and_attention_per_gpu(
    monkeypatch, capsys, capability, precision, attention, torch_knows_emulation
):
    mock_gpu(monkeypatch, capability, torch_knows_emulation=torch_knows_emulation)
    assert hardware.resolve_precision(CUDA, "auto") == precision
    assert hardware.scoring_precision(CUDA, "auto") == precision
    assert hardware.grad_scaler(torch.device("cpu"), precision).is_enabled() == (
        precision == "fp16"
    )
    encoder = ESMCEncoder(ESMC_TINY)
    assert encoder.resolved_attention_backend(CUDA, HALF[precision]) == attention
    assert encoder.resolved_attention_backend(CUDA, torch.float32) == "padded"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("capability", [(7, 0), (7, 5)])
def test_bf16_asked_for_on_a_gpu_without_it_runs_fp16_with_one_line(
    monkeypatch, capsys, capability
):
    mock_gpu(monkeypatch, capability)
    assert hardware.resolve_precision(CUDA, "bf16") == "fp16"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bf16" in err and "8.0" in err and "fp16" in err
    assert hardware.scoring_precision(CUDA, "bf16") == "fp16"
    assert capsys.readouterr().err.count("\n") == 1
    assert hardware.resolve_precision(CUDA, "fp16") == "fp16"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0)])
def test_bf16_asked_for_on_ampere_and_later_is_bf16_silently(monkeypatch, capsys, capability):
    mock_gpu(monkeypatch, capability)
    assert hardware.resolve_precision(CUDA, "bf16") == "bf16"
    assert hardware.scoring_precision(CUDA, "bf16") == "bf16"
    assert hardware.resolve_precision(CUDA, "fp32") == "fp32"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("capability", "attention"), [(c, a) for c, _, a in GPUS])
def test_flash_attention_only_from_sm80(monkeypatch, capability, attention, dtype):
    mock_gpu(monkeypatch, capability)
    assert ESMCEncoder(ESMC_TINY).resolved_attention_backend(CUDA, dtype) == attention


# --- what counts as out of memory (#9) ------------------------------------------------------

CUBLAS = "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"
ALLOCATION_FAILURES = [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError(CUBLAS),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
]
if hasattr(torch, "AcceleratorError"):  # what torch 2.8+ raises for a CUDA runtime error
    ALLOCATION_FAILURES.append(torch.AcceleratorError("CUDA error: out of memory"))
OTHER_ERRORS = [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied"),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED"),
    ValueError("out of memory"),  # not an error torch raises for an allocation
]


@pytest.mark.parametrize("error", ALLOCATION_FAILURES, ids=str)
def test_allocation_failures_are_out_of_memory(error):
    assert hardware.is_out_of_memory(error)


@pytest.mark.parametrize("error", OTHER_ERRORS, ids=str)
def test_other_errors_are_not(error):
    assert not hardware.is_out_of_memory(error)


def test_out_of_memory_is_recognised_on_torch_without_torch_out_of_memory_error(monkeypatch):
    """torch 2.4 (pyproject's floor allows it) has only torch.cuda.OutOfMemoryError."""
    cuda_type = torch.cuda.OutOfMemoryError
    monkeypatch.delattr(torch, "OutOfMemoryError")
    assert hardware.is_out_of_memory(cuda_type("Tried to allocate 2.00 GiB"))
    assert hardware.is_out_of_memory(RuntimeError(CUBLAS))
    assert not hardware.is_out_of_memory(RuntimeError("shape mismatch"))
    monkeypatch.delattr(torch.cuda, "OutOfMemoryError")
    assert hardware.is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))


def test_a_cublas_allocation_failure_is_retried_in_smaller_batches(capsys):
    from synnav_cli.scoring.score import Runtime, run_batches

    lengths = [100] * 8
    runtime = Runtime(torch.device("cpu"), "fp32", 800)

    def work(index):
        if len(index) > 2:
            raise RuntimeError(CUBLAS)
        return list(index)

    seen = sorted(i for _, done in run_batches(lengths, runtime, work) for i in done)
    assert seen == list(range(8))
    assert runtime.max_tokens <= 200
    assert "retrying it with up to" in capsys.readouterr().err


# --- the failed batch is released before the cache is freed (#10) ---------------------------


class FailedBatch:
    """Work that allocates a batch's tensor and then runs out of memory, as a CUDA batch does;
    :meth:`free_cached_memory` stands in for ``torch.cuda.empty_cache`` and records whether that
    tensor was still alive when the cache was freed (it would then stay allocated)."""

    def __init__(self, fails_above: int) -> None:
        self.fails_above, self.tensors, self.alive_at_free = fails_above, [], []

    def __call__(self, index) -> list[int]:
        activations = torch.ones(len(index), 1000)
        self.tensors.append(weakref.ref(activations))
        if len(index) > self.fails_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return list(index)

    def free_cached_memory(self, device) -> None:
        self.alive_at_free.append(any(ref() is not None for ref in self.tensors))


def test_scoring_frees_the_cache_after_the_failed_batch_is_gone(monkeypatch, capsys):
    from synnav_cli.scoring.score import Runtime, run_batches

    work = FailedBatch(fails_above=2)
    monkeypatch.setattr(hardware, "free_cached_memory", work.free_cached_memory)
    runtime = Runtime(torch.device("cpu"), "fp32", 1000)
    seen = sorted(i for _, done in run_batches([100] * 8, runtime, work) for i in done)
    assert seen == list(range(8))
    assert work.alive_at_free and not any(work.alive_at_free)


def test_training_frees_the_cache_after_the_failed_part_is_gone(monkeypatch, capsys):
    from synnav_cli.scoring.score import Runtime
    from synnav_cli.train.steps import accumulate

    work = FailedBatch(fails_above=2)
    monkeypatch.setattr(hardware, "free_cached_memory", work.free_cached_memory)

    def backward(part):
        work(part)
        return torch.tensor(float(len(part)))

    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    runtime = Runtime(torch.device("cpu"), "fp32", 1000)
    assert float(accumulate(backward, [100] * 8, optimizer, runtime)) == 8.0
    assert work.alive_at_free and not any(work.alive_at_free)


# --- fp16 overflow re-run in fp32 (#11) -----------------------------------------------------

PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQ", "ACDEFGHIKLMNPQRSTVWY" * 3, "PEPTIDEPEPTIDEPEPTIDE", "W" * 40]


class OverflowsInFp16(torch.nn.Module):
    """The tiny encoder with a layer whose activations pass fp16's largest value (65,504) by a
    factor of about ten: finite in fp32, inf under fp16 autocast, as a real overflow is."""

    SCALE = 1e5

    def __init__(self, encoder: torch.nn.Module, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.up = torch.nn.Linear(dim, dim, bias=False)
        with torch.no_grad():
            self.up.weight.copy_(torch.eye(dim) * self.SCALE)

    def forward(self, input_ids, attention_mask):
        return self.up(self.encoder(input_ids, attention_mask)) / self.SCALE


def overflowing_model():
    from tiny_backbone import TinyBackbone

    from synnav_cli.model import LocalizationModel

    backbone = TinyBackbone()
    encoder = OverflowsInFp16(backbone.build_encoder(), backbone.embedding_dim)
    return LocalizationModel(encoder, backbone.embedding_dim, 3).eval(), backbone


def runtime(precision: str):
    from synnav_cli.scoring.score import Runtime

    return Runtime(torch.device("cpu"), precision, 64)  # a batch or so a protein: 4 batches


def test_fp16_overflow_is_scored_again_in_fp32_with_one_line(capsys):
    from synnav_cli.scoring.score import score_sequences

    model, backbone = overflowing_model()
    batch = backbone.tokenize(PROTEINS[:1])
    with torch.autocast("cpu", dtype=torch.float16), torch.inference_mode():
        overflowed = model.encoder(batch.input_ids, batch.attention_mask)
    assert not torch.isfinite(overflowed).all()  # the fixture overflows as it should
    expected = score_sequences(model, backbone, PROTEINS, runtime("fp32"))
    assert capsys.readouterr().err == ""
    fp16 = runtime("fp16")
    found = score_sequences(model, backbone, PROTEINS, fp16)
    assert np.isfinite(found).all()
    np.testing.assert_array_equal(found, expected)
    assert fp16.fp32_reruns > 1  # every batch overflowed; one line said so
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fp16" in err and "fp32" in err


def test_fp16_overflow_in_embeddings_is_run_again_in_fp32(capsys):
    from synnav_cli.scoring.embed import embed_sequences

    model, backbone = overflowing_model()
    expected = embed_sequences(model.encoder, backbone, PROTEINS, runtime("fp32"), per_residue=True)
    found = embed_sequences(model.encoder, backbone, PROTEINS, runtime("fp16"), per_residue=True)
    assert np.isfinite(found.pooled).all()
    np.testing.assert_array_equal(found.pooled, expected.pooled)
    for a, b in zip(found.residues, expected.residues):
        np.testing.assert_array_equal(a, b)
    assert capsys.readouterr().err.count("\n") == 1


def test_finite_fp16_batches_are_not_run_again(capsys):
    from tiny_backbone import TinyBackbone

    from synnav_cli.model import LocalizationModel
    from synnav_cli.scoring.score import score_sequences

    backbone = TinyBackbone()
    model = LocalizationModel(backbone.build_encoder(), backbone.embedding_dim, 3).eval()
    fp16 = runtime("fp16")
    assert np.isfinite(score_sequences(model, backbone, PROTEINS, fp16)).all()
    assert fp16.fp32_reruns == 0 and capsys.readouterr().err == ""


def test_fp16_overflow_in_the_frozen_embedding_cache_is_run_again_in_fp32(capsys):
    from synnav_cli.train.embedding_cache import pooled_embeddings

    model, backbone = overflowing_model()
    expected = pooled_embeddings(model, backbone, PROTEINS, runtime("fp32"))
    found = pooled_embeddings(model, backbone, PROTEINS, runtime("fp16"))
    np.testing.assert_array_equal(found, expected)
    assert capsys.readouterr().err.count("\n") == 1


def test_batches_reach_a_gpu_through_page_locked_memory_without_waiting(monkeypatch):
    """A copy from pageable memory to a GPU waits for the queued kernels; from pinned it does not."""
    from synnav_cli.backbones.base import to_device

    calls = []
    real_to = torch.Tensor.to

    def pin_memory(self):
        calls.append("pin")
        return self

    def to(self, *args, **kwargs):
        calls.append(("to", str(args[0]), kwargs.get("non_blocking", False)))
        return real_to(self, "cpu")

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    to_device(torch.zeros(3), torch.device("cuda", 1))
    assert calls == ["pin", ("to", "cuda:1", True)]
    calls.clear()
    to_device(torch.zeros(3), "cpu")
    assert calls == [("to", "cpu", False)]
