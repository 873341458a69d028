"""ESM2's inference-only encoder on CPU (backbones/esm2_inference.py): built without transformers,
from the same checkpoint, it gives the very numbers the EsmModel-based encoder gives, and refuses
a checkpoint that does not fit as the EsmModel build does."""

from __future__ import annotations

import io

import pytest
import torch
from hub_fixture import cache_repo, no_network, tiny_esm2_files, tiny_hub  # noqa: F401 - fixtures
from safetensors.torch import load, save

from synnav_cli.backbones.esm2 import ESM2Encoder
from synnav_cli.backbones.esm2_inference import ESM2InferenceEncoder
from synnav_cli.errors import UserError
from synnav_cli.plugins import get_backbone

REPO = "facebook/esm2_t6_8M_UR50D"
PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQLEERLG", "MNGTEGPNFYVPFSNKTGVV", "ACDEFGHIK"]


def _cache(hub, files: dict[str, bytes]) -> None:
    cache_repo(hub, REPO, files)


def _outputs(encoder, backbone) -> torch.Tensor:
    batch = backbone.tokenize(PROTEINS)
    batch.input_ids[2, 4] = 32  # a <mask> token: token dropout's rescaling must agree too
    with torch.inference_mode():
        return encoder(batch.input_ids, batch.attention_mask)


def test_same_numbers_as_the_esm_model_build(tiny_hub):  # noqa: F811
    _cache(tiny_hub, tiny_esm2_files(seed=3))
    backbone = get_backbone("esm2_8m")
    light = backbone.build_inference_encoder(torch.device("cpu"), offline=True)
    full = backbone.build_encoder(pretrained=True, offline=True)
    assert isinstance(light, ESM2InferenceEncoder) and isinstance(full, ESM2Encoder)
    # Bit for bit: the same tensors through the same packed forward.
    assert torch.equal(_outputs(light, backbone), _outputs(full, backbone))
    # Every weight came from the file (none left random, none on the meta device).
    full_state = full.esm.state_dict()
    for name, tensor in light.esm.state_dict().items():
        assert tensor.device.type == "cpu"
        assert torch.equal(tensor, full_state[name]), name
    # --precision bf16 on CPU casts the encoder (scoring.load.cast_encoder): still the same.
    light, full = light.to(torch.bfloat16), full.to(torch.bfloat16)
    assert torch.equal(_outputs(light, backbone), _outputs(full, backbone))


def test_reads_pytorch_model_bin_when_that_is_what_the_cache_holds(tiny_hub):  # noqa: F811
    files = tiny_esm2_files(seed=4)
    buffer = io.BytesIO()
    torch.save(load(files.pop("model.safetensors")), buffer)
    _cache(tiny_hub, {**files, "pytorch_model.bin": buffer.getvalue()})
    backbone = get_backbone("esm2_8m")
    light = backbone.build_inference_encoder(torch.device("cpu"), offline=True)
    full = backbone.build_encoder(pretrained=True, offline=True)
    assert torch.equal(_outputs(light, backbone), _outputs(full, backbone))


@pytest.mark.parametrize(
    "change, expected",
    [
        ("drop", "missing esm.encoder.layer.1.output.dense.weight"),
        ("extra", "unexpected esm.encoder.layer.0.attention.self.extra"),
        ("shape", "mis-shaped esm.embeddings.word_embeddings.weight"),
        ("dtype", "non-float esm.encoder.layer.0.LayerNorm.weight (torch.int32)"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_one_clear_error(tiny_hub, change, expected):  # noqa: F811
    files = tiny_esm2_files()
    state = load(files["model.safetensors"])
    if change == "drop":
        del state["esm.encoder.layer.1.output.dense.weight"]
    elif change == "extra":
        state["esm.encoder.layer.0.attention.self.extra"] = torch.zeros(3)
    elif change == "shape":
        state["esm.embeddings.word_embeddings.weight"] = torch.zeros(40, 64)
    else:
        state["esm.encoder.layer.0.LayerNorm.weight"] = torch.ones(64, dtype=torch.int32)
    _cache(tiny_hub, {**files, "model.safetensors": save(state)})
    with pytest.raises(UserError, match="does not fit backbone esm2_8m") as error:
        get_backbone("esm2_8m").build_inference_encoder(torch.device("cpu"), offline=True)
    assert expected in str(error.value)


def test_a_damaged_safetensors_file_names_the_file(tiny_hub):  # noqa: F811
    files = tiny_esm2_files()
    _cache(tiny_hub, {**files, "model.safetensors": files["model.safetensors"][:200]})
    with pytest.raises(UserError, match="model.safetensors"):
        get_backbone("esm2_8m").build_inference_encoder(torch.device("cpu"), offline=True)


def test_other_devices_keep_the_esm_model_build(tiny_hub):  # noqa: F811
    _cache(tiny_hub, tiny_esm2_files())
    encoder = get_backbone("esm2_8m").build_inference_encoder(torch.device("meta"), offline=True)
    assert isinstance(encoder, ESM2Encoder)
