"""--precision for predict, evaluate and embed: fp32 by default on CPU, bf16 on cast weights where
the CPU multiplies bf16 in hardware, fp32 with one line on stderr where it does not."""

from __future__ import annotations

import csv
import io
import json

import launch
import numpy as np
import pytest
import torch
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.data.fasta import read_fasta
from synnav_cli.errors import UserError
from synnav_cli.modeldir import read_model_info
from synnav_cli.plugins import get_backbone
from synnav_cli.runtime import hardware
from synnav_cli.scoring.embed import embed_sequences
from synnav_cli.scoring.load import cast_encoder, open_model, scoring_runtime
from synnav_cli.scoring.score import Runtime, score_sequences

CPU = torch.device("cpu")


@pytest.fixture
def native_bf16(monkeypatch):
    """This CPU multiplies bf16 in hardware (any CPU runs bf16 ops; without it, emulated)."""
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)


def probabilities(output: str) -> np.ndarray:
    rows = list(csv.reader(io.StringIO(output), delimiter="\t"))
    labels = slice(2, rows[0].index("predicted"))  # the probability columns
    return np.array([[float(x) for x in row[labels]] for row in rows[1:]])


def test_cpu_resolution(native_bf16, capsys):
    assert hardware.scoring_precision(CPU, "auto") == "fp32"
    assert hardware.scoring_precision(CPU, "fp32") == "fp32"
    assert hardware.scoring_precision(CPU, "bf16") == "bf16"
    assert hardware.scoring_precision(CPU, "bfloat16") == "bf16"  # the origin's spellings work
    assert capsys.readouterr().err == ""
    assert hardware.scoring_precision(CPU, "fp16") == "fp32"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision fp16" in err and "fp32" in err
    with pytest.raises(UserError, match="unknown precision"):
        hardware.scoring_precision(CPU, "int4")


def test_bf16_falls_back_to_fp32_without_native_bf16(no_native_bf16, capsys):
    runtime = scoring_runtime(get_backbone("tiny"), "cpu", 100, None, "bf16")
    assert (runtime.precision, runtime.weights_cast) == ("fp32", False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "AVX512-BF16" in err and "running fp32" in err


def test_native_bf16_detection_does_not_trust_onednn_on_x86(monkeypatch):
    # oneDNN says yes on any AVX-512 CPU, where bf16 is emulated (slower than fp32).
    monkeypatch.setattr(hardware.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert hardware.cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert hardware.cpu_has_native_bf16() is True


def test_bf16_reaches_the_encoder_and_pooling_stays_fp32(native_bf16):
    backbone = get_backbone("tiny")
    sequences = ["MKVLAAGIVGLLLAAQPAMA" * 3, "MSTNPKPQRKTKRNTNRRPQDVKFPGG" * 2]
    seen = {}

    def run(precision: str) -> np.ndarray:
        runtime = scoring_runtime(backbone, "cpu", 512, None, precision)
        encoder = cast_encoder(backbone.build_encoder(pretrained=True), runtime)
        def record(module, inputs, output) -> None:
            seen[precision] = inputs[0].dtype

        hook = encoder.conv.register_forward_hook(record)
        try:
            return embed_sequences(encoder, backbone, sequences, runtime).pooled
        finally:
            hook.remove()

    fp32, bf16 = run("auto"), run("bf16")
    assert seen == {"auto": torch.float32, "bf16": torch.bfloat16}
    assert bf16.dtype == np.float32
    difference = np.abs(bf16 - fp32).max()
    assert 0 < difference < 0.05 * np.abs(fp32).max()


def test_auto_on_cpu_is_what_scoring_always_ran(tmp_path):
    model_dir = launch.tiny_model_dir(tmp_path / "m")
    sequences = [r.sequence for r in read_fasta(launch.write_fasta(tmp_path / "a.fa", 12))]
    loaded = open_model(read_model_info(model_dir), device="cpu")
    assert (loaded.runtime.precision, loaded.runtime.weights_cast) == ("fp32", False)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    before = Runtime(CPU, "fp32", hardware.CPU_PREDICT_TOKENS)  # what scoring built before
    expected = score_sequences(loaded.model, loaded.backbone, sequences, before)
    found = score_sequences(loaded.model, loaded.backbone, sequences, loaded.runtime)
    assert np.array_equal(found, expected)


def test_predict_with_precision(runner, tmp_path, native_bf16):
    model_dir = launch.tiny_model_dir(tmp_path / "m")
    fasta = str(launch.write_fasta(tmp_path / "a.fa", 12, lengths=(30, 120)))
    base = ["predict", fasta, "--model", str(model_dir), "--device", "cpu"]
    runs = {p: runner.invoke(cli, [*base, "--precision", p]) for p in ("auto", "fp32", "bf16")}
    plain = runner.invoke(cli, base)
    for result in (*runs.values(), plain):
        assert result.exit_code == 0, result.output
    assert runs["auto"].stdout == runs["fp32"].stdout == plain.stdout
    change = np.abs(probabilities(runs["bf16"].stdout) - probabilities(plain.stdout)).max()
    assert 0 < change < 0.05


def test_an_unknown_precision_is_one_line(runner, tmp_path):
    fasta = str(launch.write_fasta(tmp_path / "a.fa", 2))
    for command in (["predict", fasta], ["embed", fasta, "-b", "tiny", "-o", "e.npz"],
                    ["evaluate"]):  # fmt: skip
        result = runner.invoke(cli, [*command, "--precision", "int8"])
        assert result.exit_code == 1
        one_error_line(result, "unknown precision 'int8'")


def test_outputs_say_how_they_were_made(runner, tmp_path, native_bf16, small_dataset):
    fasta = str(launch.write_fasta(tmp_path / "a.fa", 4, lengths=(30, 60)))
    out = tmp_path / "e.npz"
    result = runner.invoke(cli, ["embed", fasta, "-b", "tiny", "-o", str(out), "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    assert json.loads(str(np.load(out)["metadata"]))["precision"] == "bf16"
    model_dir = launch.tiny_model_dir(tmp_path / "m")
    result = runner.invoke(cli, ["evaluate", "-m", str(model_dir), "-d", str(small_dataset),
                                 "--format", "json", "--precision", "bf16", "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["precision"] == "bf16"
