"""The example plugin, installed, works end to end through the synnav command line.

Run after `pip install -e plugins/synnav-example-backbone`: the entry point must be installed
for a fresh `synnav` process to find the backbone.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from synnav_example_backbone import VOCABULARY, ExampleBackbone, OneHotGRU

from synnav_cli.cli.main import cli

LABELS = ("cytosol", "nucleus")


def synnav(*args: str, env: dict, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "synnav_cli", *args], check=False, input=stdin, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict:
    """Private model and cache directories, for this process and the ones it starts."""
    values = {"SYNNAV_DATA_DIR": str(tmp_path / "data"), "SYNNAV_CACHE_DIR": str(tmp_path / "cache"),
              "HF_HUB_OFFLINE": "1"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return {**os.environ, **values}


def synnav_here(*args: str, stdin: str | None = None) -> str:
    """Run synnav in this process (cheaper than a fresh interpreter); the entry point is still
    what registers the backbone."""
    result = CliRunner().invoke(cli, list(args), input=stdin)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def dataset(tmp_path):
    rng = random.Random(0)
    records = []
    for i, split in enumerate(["train"] * 24 + ["dev"] * 8 + ["test"] * 8):
        nuclear = i % 2 == 0
        # Nuclear proteins carry a lysine-rich signal, so there is something to learn.
        core = "".join(rng.choice("ACDEFGHILMNPQSTVWY") for _ in range(rng.randint(20, 50)))
        sequence = "M" + ("PKKKRKV" if nuclear else "") + core
        records.append({"entry": f"P{i:03d}", "sequence": sequence, "split": split,
                        "labels": {"cytosol": 0 if nuclear else 1, "nucleus": 1 if nuclear else 0}})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(records))
    return path


def test_backbones_lists_the_plugin(env):
    # A fresh process: proves the installed entry point is found, not a registration made here.
    rows = json.loads(synnav("backbones", "--json", env=env).stdout)
    (row,) = [r for r in rows if r["id"] == "example"]
    assert row["aliases"] == ["example-gru"]
    assert row["embedding_dim"] == 32 and row["cached"] is None


def test_train_then_predict(env, dataset, tmp_path):
    model_dir = tmp_path / "model"
    synnav_here("train", "--backbone", "example", "--data", str(dataset), "--out", str(model_dir), "--epochs", "1",
                "--batch-size", "8", "--device", "cpu")
    meta = json.loads((model_dir / "synnav-model.json").read_text())
    assert meta["backbone"] == "example" and meta["labels"] == list(LABELS)

    fasta = ">nuclear\nMPKKKRKVAAGLLSTWGSRLEH\n>other\nMSTAGLLWQEDAPRTSELLKGQ*\n"  # 20+ residues: scored
    output = synnav_here("predict", "-", "--model", str(model_dir), "--device", "cpu", stdin=fasta)
    rows = list(csv.DictReader(io.StringIO(output), delimiter="\t"))
    assert [r["id"] for r in rows] == ["nuclear", "other"]
    assert all(0.0 <= float(r[label]) <= 1.0 for r in rows for label in LABELS)
    assert [r["status"] for r in rows] == ["ok", "ok"]


def test_embedding_does_not_depend_on_batch_padding():
    backbone = ExampleBackbone()
    encoder = backbone.build_encoder().eval()
    alone = backbone.tokenize(["MKTAYIAK"])
    padded = backbone.tokenize(["MKTAYIAK", "MKTAYIAKQRQISFVKSHFSRQ"])
    with torch.no_grad():
        a = encoder(alone.input_ids, alone.attention_mask)[0]
        b = encoder(padded.input_ids, padded.attention_mask)[0, : a.shape[0]]
    torch.testing.assert_close(a, b)
    assert isinstance(backbone.input_embedding(encoder), torch.nn.Embedding)
    assert isinstance(encoder, OneHotGRU) and len(VOCABULARY) == 28
