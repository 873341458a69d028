"""synnav embed: shape, order and values equal the pooled embeddings predict's head reads."""

from __future__ import annotations

import launch
import numpy as np
import torch
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.data.fasta import read_fasta
from synnav_cli.modeldir import load_model, read_model_info
from synnav_cli.plugins import get_backbone


def test_embed_with_a_model_equals_what_its_head_reads(runner, tmp_path):
    model_dir = launch.tiny_model_dir(tmp_path / "m")
    fasta = launch.write_fasta(tmp_path / "in.fasta", 25, lengths=(20, 90))
    out = tmp_path / "emb.npz"
    result = runner.invoke(cli, ["embed", str(fasta), "--model", str(model_dir), "--out", str(out),
                                 "--per-residue", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    saved = np.load(out)  # plain arrays: no allow_pickle needed
    records = list(read_fasta(fasta))
    assert list(saved["ids"]) == [r.id for r in records]
    assert list(saved["lengths"]) == [len(r.sequence) for r in records]
    info = read_model_info(model_dir)
    backbone = get_backbone(info.meta["backbone"])
    model = load_model(info, backbone, torch.device("cpu"))
    with torch.inference_mode():
        expected = np.stack([model.embed(backbone.tokenize([r.sequence]))[0].numpy() for r in records])
    assert saved["embeddings"].shape == (25, backbone.embedding_dim)
    np.testing.assert_allclose(saved["embeddings"], expected, atol=1e-5)
    offsets = saved["offsets"]
    assert offsets[-1] == len(saved["residue_embeddings"]) == sum(len(r.sequence) for r in records)
    first = saved["residue_embeddings"][offsets[0]:offsets[1]]
    np.testing.assert_allclose(first.mean(axis=0), expected[0], atol=1e-5)


def test_embed_with_a_backbone_in_float16(runner, tmp_path):
    fasta = launch.write_fasta(tmp_path / "in.fasta", 5, lengths=(20, 40))
    out = tmp_path / "emb.npz"
    result = runner.invoke(cli, ["embed", str(fasta), "-b", "tiny", "--out", str(out), "--float16"])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    assert saved["embeddings"].dtype == np.float16 and saved["embeddings"].shape[0] == 5
    assert "residue_embeddings" not in saved


def test_embed_refuses_what_it_cannot_do(runner, tmp_path):
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3, lengths=(20, 40))
    one_error_line(runner.invoke(cli, ["embed", str(fasta), "-b", "tiny", "--out", str(tmp_path / "e.txt")]),
                   ".npz")
    one_error_line(runner.invoke(cli, ["embed", str(fasta), "--out", str(tmp_path / "e.npz")]),
                   "--backbone")
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a\nMKVLAAGIVGLLLAAQPAMA\n>b\nMK1\n")
    one_error_line(runner.invoke(cli, ["embed", str(bad), "-b", "tiny", "--out", str(tmp_path / "e.npz")]),
                   "record 2")
    assert not (tmp_path / "e.npz").exists()


def test_embed_says_when_the_backbone_has_no_pretrained_weights(runner, tmp_path):
    """aacnn's "pretrained" encoder is a seeded random initialisation: its vectors carry nothing
    learned, and embed says so in one line. A backbone with learned weights, or a trained
    model's encoder (the bundled model is a trained aacnn), gets no such line."""
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3, lengths=(20, 40))
    random = runner.invoke(cli, ["embed", str(fasta), "-b", "aacnn", "--out", str(tmp_path / "a.npz")])
    assert random.exit_code == 0, random.output
    lines = [line for line in random.stderr.splitlines() if "random initialisation" in line]
    assert len(lines) == 1 and "aacnn" in lines[0] and "--model" in lines[0]
    for args in (["-b", "tiny"], ["--model", "bundled"]):
        result = runner.invoke(cli, ["embed", str(fasta), *args, "--out", str(tmp_path / "b.npz")])
        assert result.exit_code == 0, result.output
        assert "random initialisation" not in result.stderr
    assert get_backbone("aacnn").random_encoder and not get_backbone("esm2-8m").random_encoder
