"""A small `synnav embed` job pays only for what it uses: no torch._dynamo, scipy or transformers
imported on the way to an ESM C or ESM2 embedding (benchmarks/small_job.py times the whole
process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hub_fixture import cache_tiny_weights, no_network, tiny_hub  # noqa: F401 - fixtures

from synnav_cli.plugins import get_backbone

# Each costs seconds of a run's start on a busy CPU; none is needed to embed with ESM C or ESM2 on
# CPU.
NOT_NEEDED = ("torch._dynamo", "scipy", "transformers", "sympy", "sklearn")

RUN = """
import json, runpy, sys
watched = json.loads(sys.argv[3])
sys.argv = ["synnav", "embed", sys.argv[1], "-b", sys.argv[4], "-o", sys.argv[2], "--threads", "1",
            "-q"]
try:
    runpy.run_module("synnav_cli", run_name="__main__")
except SystemExit as done:
    code = done.code
print(json.dumps({"code": code, "modules": [m for m in sys.modules if m in watched]}))
"""


@pytest.mark.parametrize("backbone_id", ["esmc600m", "esm2_8m"])
def test_an_embed_run_imports_nothing_it_does_not_use(tiny_hub, tmp_path, backbone_id):  # noqa: F811
    cache_tiny_weights(backbone_id, tiny_hub)
    fasta = tmp_path / "two.fasta"
    fasta.write_text(">a\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEV\n>b\nMSEQNNTEMTFQIQRIYTKDISFEAPNAPHVF\n")
    out = tmp_path / "two.npz"
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(fasta), str(out), json.dumps(NOT_NEEDED), backbone_id],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] in (0, None), done.stderr[-2000:]
    # Before: building the encoder on the meta device ran torch's reference init, which imports
    # torch._dynamo (and sympy); the k-mer search's scipy came with every predict and embed;
    # ESM2 was built as transformers' EsmModel.
    assert report["modules"] == []

    # The numbers are the encoder's own, loaded the ordinary way (random init, then the state).
    backbone = get_backbone(backbone_id)
    reference = backbone.build_encoder(pretrained=False)
    loaded = backbone.build_encoder(pretrained=True, offline=True)
    reference.load_state_dict(loaded.state_dict())
    batch = backbone.tokenize(
        ["MKTAYIAKQRQISFVKSHFSRQLEERLGLIEV", "MSEQNNTEMTFQIQRIYTKDISFEAPNAPHVF"]
    )
    with torch.inference_mode():
        expected = reference(batch.input_ids, batch.attention_mask)
        got = loaded(batch.input_ids, batch.attention_mask)
    mask = batch.residue_mask.unsqueeze(-1)
    torch.testing.assert_close(got * mask, expected * mask, atol=1e-5, rtol=1e-5)
    pooled = np.load(out)["embeddings"]
    means = ((expected * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(pooled, means, atol=1e-4)
