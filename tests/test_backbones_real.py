"""The real ESM2 and ESM C backbones, built tiny, loaded offline from a hub-layout cache.

Only the architecture is swapped (``SYNNAV_TEST_TINY_BACKBONES=1``); repository, file name,
cache resolution, integrity check and state-dict loading are the code users run.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hub_fixture import (  # noqa: F401 - fixtures
    blob_of,
    cache_repo,
    cache_tiny_weights,
    no_network,
    official_esmc_state_dict,
    tiny_esm2_files,
    tiny_esmc_checkpoint,
    tiny_hub,
)

from synnav_cli.backbones.esm_alphabet import ESM_TOKENS, ESM_VOCABULARY
from synnav_cli.errors import UserError
from synnav_cli.plugins import backbone_registry, get_backbone

PROTEINS = ["MKTAYIAKQRQISFVKSHFSRQ", "MEEPQSDPSV", "ACDEFGHIKLMNPQRSTVWY" * 3]


def embed(encoder, backbone, sequences):
    batch = backbone.tokenize(sequences)
    with torch.no_grad():
        return encoder(batch.input_ids, batch.attention_mask), batch


# --- registry -------------------------------------------------------------------------------------


def test_registered_weights_and_licences():
    registry = backbone_registry()
    expected = {
        "esmc600m": ("EvolutionaryScale/esmc-600m-2024-12", "Cambrian Non-Commercial", 1152, 2048),
        "esmc300m": ("EvolutionaryScale/esmc-300m-2024-12", "Cambrian Open", 960, 2048),
        "esm2_8m": ("facebook/esm2_t6_8M_UR50D", "MIT", 320, 1022),
        "esm2_35m": ("facebook/esm2_t12_35M_UR50D", "MIT", 480, 1022),
        "esm2_150m": ("facebook/esm2_t30_150M_UR50D", "MIT", 640, 1022),
        "esm2_650m": ("facebook/esm2_t33_650M_UR50D", "MIT", 1280, 1022),
    }
    for backbone_id, (repo, licence, dim, max_length) in expected.items():
        backbone = registry.backbones[backbone_id]
        assert (backbone.weights_repo, backbone.license) == (repo, licence)
        assert (backbone.embedding_dim, backbone.max_length) == (dim, max_length)
    assert registry.resolve("esmc-300m").id == "esmc300m"
    assert registry.resolve("ESM2_T6_8M_UR50D").id == "esm2_8m"


def test_registration_imports_no_model_code():
    # transformers and the ESM C module (which pulls in torch's compiler) cost seconds to import;
    # every command lists backbones, so registering must not import them.
    code = (
        "import sys; from synnav_cli.plugins import backbone_registry; "
        "r = backbone_registry(); assert len(r.backbones) >= 6; "
        "print(sorted(m for m in sys.modules if m.startswith(('transformers', 'torch._dynamo', "
        "'synnav_cli.backbones.esmc_model'))))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


def test_esmc_dimensions_agree_with_model_configs():
    from synnav_cli.backbones.esmc_model import ESMC_300M, ESMC_600M

    assert get_backbone("esmc600m").config == ESMC_600M
    assert get_backbone("esmc300m").config == ESMC_300M
    for name in ("esmc600m", "esmc300m"):
        backbone = get_backbone(name)
        assert backbone.embedding_dim == backbone.config.d_model


def test_esm_vocabulary_matches_esm2_vocab_list():
    from transformers.models.esm.configuration_esm import get_default_vocab_list

    esm2 = list(get_default_vocab_list())
    assert len(esm2) == len(ESM_TOKENS) == 33
    # Position 31 is a never-used filler in both: ESM2's <null_1>, ESM C's "|".
    assert [t for i, t in enumerate(esm2) if i != 31] == [
        t for i, t in enumerate(ESM_TOKENS) if i != 31
    ]
    assert (esm2[31], ESM_TOKENS[31]) == ("<null_1>", "|")


def test_tiny_switch_changes_architecture_not_weights_location(monkeypatch):
    monkeypatch.delenv("SYNNAV_TEST_TINY_BACKBONES", raising=False)
    esmc, esm2 = get_backbone("esmc600m"), get_backbone("esm2_8m")
    assert (esmc.embedding_dim, esm2.embedding_dim) == (1152, 320)
    assert esmc.fingerprint() == "esmc600m"
    monkeypatch.setenv("SYNNAV_TEST_TINY_BACKBONES", "1")
    assert (esmc.embedding_dim, esm2.embedding_dim) == (64, 64)
    assert esmc.fingerprint() == "esmc600m+tiny"
    assert esmc.weights_repo == "EvolutionaryScale/esmc-600m-2024-12"


# --- ESM2 -----------------------------------------------------------------------------------------


def test_esm2_random_init_needs_no_download(tiny_hub):
    backbone = get_backbone("esm2_8m")
    encoder = backbone.build_encoder(pretrained=False, offline=True)
    out, batch = embed(encoder, backbone, PROTEINS)
    assert out.shape == (3, batch.input_ids.shape[1], 64)
    assert encoder.esm.config._attn_implementation == "sdpa"
    assert not list(tiny_hub.iterdir())


def test_esm2_full_config_is_the_published_one():
    from synnav_cli.backbones.esm2 import ESM2_SIZES

    architectures = {backbone_id: arch for backbone_id, _, _, arch, _ in ESM2_SIZES}
    config = architectures["esm2_8m"].config()
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (320, 6, 20)
    assert (config.intermediate_size, config.vocab_size, config.pad_token_id) == (1280, 33, 1)
    assert config.position_embedding_type == "rotary" and config.token_dropout


def test_esm2_loads_published_layout_offline(tiny_hub):
    from transformers import EsmForMaskedLM

    from synnav_cli.backbones.esm2 import ESM2_TINY

    cache_tiny_weights("esm2_8m", seed=3)
    backbone = get_backbone("esm2_8m")
    assert backbone.weights_cached()
    encoder = backbone.build_encoder(pretrained=True)
    out, batch = embed(encoder, backbone, PROTEINS)

    with torch.random.fork_rng():
        torch.manual_seed(3)
        reference = EsmForMaskedLM(ESM2_TINY.config()).esm.eval()
    with torch.no_grad():
        expected = reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    mask = batch.attention_mask
    torch.testing.assert_close(out[mask], expected.last_hidden_state[mask])
    # A trained model directory saves the encoder's state dict and reloads it into a random one.
    random_keys = backbone.build_encoder(pretrained=False).state_dict().keys()
    assert encoder.state_dict().keys() == random_keys


def test_esm2_padding_does_not_change_embeddings(tiny_hub):
    cache_tiny_weights("esm2_8m")
    backbone = get_backbone("esm2_8m")
    encoder = backbone.build_encoder()
    together, batch = embed(encoder, backbone, PROTEINS)
    for row, protein in enumerate(PROTEINS):
        alone, single = embed(encoder, backbone, [protein])
        n = single.input_ids.shape[1]
        torch.testing.assert_close(together[row, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_esm2_falls_back_to_pytorch_model_bin(tiny_hub):
    import io

    from safetensors.torch import load

    files = tiny_esm2_files()
    state = load(files["model.safetensors"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    cache_repo(tiny_hub, "facebook/esm2_t6_8M_UR50D",
               {"config.json": files["config.json"], "pytorch_model.bin": buffer.getvalue()})  # fmt: skip
    backbone = get_backbone("esm2_8m")
    assert backbone.weights_cached()
    snapshot, weights = backbone.fetch_weights()
    assert weights == "pytorch_model.bin"
    out, _ = embed(backbone.build_encoder(), backbone, PROTEINS[:1])
    assert torch.isfinite(out).all()


def test_esm2_refuses_a_config_for_another_size(tiny_hub, monkeypatch):
    cache_tiny_weights("esm2_8m")
    monkeypatch.delenv("SYNNAV_TEST_TINY_BACKBONES")
    with pytest.raises(UserError, match=r"config.json of facebook/esm2_t6_8M_UR50D.*hidden_size=64"):
        get_backbone("esm2_8m").build_encoder()


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda t: t.pop("esm.encoder.layer.1.attention.self.key.weight"),
         "missing encoder.layer.1.attention.self.key.weight"),
        (lambda t: t.update({"esm.encoder.layer.2.output.dense.bias": torch.zeros(64)}),
         "unexpected esm.encoder.layer.2.output.dense.bias"),
    ],
    ids=["missing", "unexpected"],
)  # fmt: skip
def test_esm2_refuses_weights_that_do_not_all_load(tiny_hub, change, expected):
    from safetensors.torch import load, save

    from synnav_cli.backbones.esm2 import IGNORED_CHECKPOINT_KEYS

    files = tiny_esm2_files()
    tensors = load(files["model.safetensors"])
    # The published layout's keys that are not the encoder's are exactly the ones named as ignored.
    ignored = sorted(k for k in tensors if IGNORED_CHECKPOINT_KEYS.search(k))
    assert ignored and all(k.startswith("lm_head.") or k.endswith(".inv_freq") for k in ignored)
    change(tensors)
    files["model.safetensors"] = save(tensors, metadata={"format": "pt"})
    cache_repo(tiny_hub, "facebook/esm2_t6_8M_UR50D", files)
    with pytest.raises(UserError) as error:
        get_backbone("esm2_8m").build_encoder()
    assert "model.safetensors of facebook/esm2_t6_8M_UR50D does not fit backbone esm2_8m" in str(error.value)
    assert expected in str(error.value)


def test_esm2_offline_and_not_cached(tiny_hub):
    with pytest.raises(UserError) as error:
        get_backbone("esm2_35m").build_encoder()
    message = str(error.value)
    assert "facebook/esm2_t12_35M_UR50D" in message and "synnav cache fetch esm2_35m" in message
    assert "\n" not in message


def test_esm2_damaged_weights(tiny_hub):
    snapshot = cache_tiny_weights("esm2_8m")
    blob = blob_of(snapshot / "model.safetensors")
    blob.write_bytes(blob.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"model\.safetensors of facebook/esm2_t6_8M_UR50D is damaged"):
        get_backbone("esm2_8m").build_encoder()


# --- ESM C ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_esmc_loads_official_layout_offline(tiny_hub, dtype):
    from synnav_cli.backbones.esmc_model import ESMC_TINY

    backbone = get_backbone("esmc300m")
    cache_repo(tiny_hub, backbone.weights_repo,
               {backbone.weights_file: tiny_esmc_checkpoint(seed=5, dtype=dtype)})  # fmt: skip
    assert backbone.weights_cached()
    encoder = backbone.build_encoder(pretrained=True)
    assert not encoder.training
    official = official_esmc_state_dict(ESMC_TINY.d_model, ESMC_TINY.n_layers, seed=5, dtype=dtype)
    loaded = encoder.state_dict()
    assert not any(key.startswith("sequence_head.") for key in loaded)
    for key, value in loaded.items():
        torch.testing.assert_close(value, official[key].to(value.dtype))
    out, batch = embed(encoder, backbone, PROTEINS)
    assert out.shape == (3, batch.input_ids.shape[1], ESMC_TINY.d_model)
    assert torch.isfinite(out).all()


def test_fine_tuning_never_writes_into_the_cache(tiny_hub):
    # The checkpoint is memory-mapped and its tensors adopted: the mapping must be private.
    import hashlib

    snapshot = cache_tiny_weights("esmc300m")
    blob = blob_of(snapshot / "data/weights/esmc_300m_2024_12_v0.pth")
    encoder = get_backbone("esmc300m").build_encoder()
    parameters = list(encoder.parameters())
    assert parameters and all(p.requires_grad and p.dtype == torch.float32 for p in parameters)
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    batch = ESM_VOCABULARY.batch(PROTEINS[:1])
    encoder(batch.input_ids, batch.attention_mask).square().mean().backward()
    optimizer.step()
    with torch.no_grad():
        for p in parameters:
            p.add_(1.0)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name


def test_esmc_default_backbone_end_to_end(tiny_hub):
    cache_tiny_weights("esmc600m")
    backbone = get_backbone("esmc600m")
    pretrained = backbone.build_encoder()
    random = backbone.build_encoder(pretrained=False)
    assert pretrained.state_dict().keys() == random.state_dict().keys()
    a, _ = embed(pretrained, backbone, PROTEINS[:1])
    b, _ = embed(random, backbone, PROTEINS[:1])
    assert not torch.allclose(a, b)


def test_esmc_offline_and_not_cached(tiny_hub):
    with pytest.raises(UserError) as error:
        get_backbone("esmc600m").build_encoder()
    message = str(error.value)
    assert "EvolutionaryScale/esmc-600m-2024-12" in message
    assert "data/weights/esmc_600m_2024_12_v0.pth" in message
    assert "SYNNAV_OFFLINE=1" in message and "synnav cache fetch esmc600m" in message


def test_esmc_truncated_checkpoint(tiny_hub):
    snapshot = cache_tiny_weights("esmc300m")
    path = snapshot / "data/weights/esmc_300m_2024_12_v0.pth"
    blob = blob_of(path)
    blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    with pytest.raises(UserError, match=r"esmc_300m_2024_12_v0\.pth of EvolutionaryScale/esmc-300m"):
        get_backbone("esmc300m").build_encoder()


def test_esmc_unreadable_checkpoint_with_a_consistent_hash(tiny_hub):
    # A file the hub cache has no complaint about (hash matches) that is still not a checkpoint.
    backbone = get_backbone("esmc300m")
    cache_repo(tiny_hub, backbone.weights_repo, {backbone.weights_file: b"<html>not a model</html>"})
    with pytest.raises(UserError, match=r"could not load cached file data/weights/esmc_300m"):
        backbone.build_encoder()


def test_esmc_checkpoint_of_another_architecture(tiny_hub):
    import io

    backbone = get_backbone("esmc300m")
    buffer = io.BytesIO()
    torch.save(official_esmc_state_dict(64, 3), buffer)  # one layer too many
    cache_repo(tiny_hub, backbone.weights_repo, {backbone.weights_file: buffer.getvalue()})
    with pytest.raises(UserError, match=r"unexpected: transformer\.blocks\.2\."):
        backbone.build_encoder()


def test_tiny_weights_are_not_mistaken_for_full_ones(tiny_hub, monkeypatch):
    cache_tiny_weights("esmc300m")
    monkeypatch.delenv("SYNNAV_TEST_TINY_BACKBONES")
    with pytest.raises(UserError, match="wrong shape"):
        get_backbone("esmc300m").build_encoder()


def test_vocabulary_frames_proteins_for_both_families():
    batch = ESM_VOCABULARY.batch(["MK", "A"])
    assert batch.input_ids.tolist() == [[0, 20, 15, 2], [0, 5, 2, 1]]


# --- through the CLI, as users run it -------------------------------------------------------------


def cli_invoke(*args, input=None):
    from click.testing import CliRunner

    from synnav_cli.cli.main import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input)


@pytest.mark.parametrize(
    "backbone_id, extra",
    [("esmc600m", []), ("esm2_8m", ["--freeze"])],
    ids=["esmc600m", "esm2_8m-frozen"],
)
def test_train_evaluate_predict_from_the_cache(tiny_hub, tmp_path, small_dataset, backbone_id, extra):
    # A fine-tuned encoder is saved in the model directory; a frozen one is not, so evaluate and
    # predict resolve and load the cached weights again.
    import csv
    import io
    import json

    from synnav_cli.data.dataset import read_dataset

    cache_tiny_weights(backbone_id)
    out = tmp_path / "model"
    result = cli_invoke("train", "--backbone", backbone_id, "--data", small_dataset, "--out", out,
                        "--epochs", "1", "--batch-size", "16", "--lr", "3e-3", "--max-length", "100", "--offline",
                        *extra)  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "synnav-model.json").read_text())
    assert meta["backbone"] == backbone_id
    assert meta["backbone_fingerprint"] == f"{backbone_id}+tiny"

    result = cli_invoke("evaluate", "--model", out, "--data", small_dataset, "--format", "json", "--offline")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mean"]["roc_auc"] is None or 0 <= report["mean"]["roc_auc"] <= 1

    data = read_dataset(small_dataset)
    fasta = "".join(f">{e}\n{s}\n" for e, s in zip(data.entries[:6], data.sequences[:6]))
    result = cli_invoke("predict", "--model", out, "-", "--offline", input=fasta)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
    assert [row["id"] for row in rows] == data.entries[:6]
    # The model keeps the --max-length it was trained with.
    assert [row["status"] for row in rows] == [
        "ok" if len(s) <= 100 else "truncated" for s in data.sequences[:6]
    ]
    assert all(0 <= float(row[label.replace(" ", "_")]) <= 1 for row in rows for label in meta["labels"])


@pytest.mark.parametrize("setting", ["--offline", "SYNNAV_OFFLINE", "HF_HUB_OFFLINE"])
def test_train_offline_without_weights_is_one_line(tiny_hub, monkeypatch, small_dataset, setting):
    monkeypatch.delenv("SYNNAV_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    args = ["train", "--backbone", "esmc600m", "--data", small_dataset, "--epochs", "1"]
    if setting.startswith("--"):
        args.append(setting)
    else:
        monkeypatch.setenv(setting, "1")
    result = cli_invoke(*args)
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("Error: EvolutionaryScale/esmc-600m-2024-12 ")
    assert "Traceback" not in result.output and "synnav cache fetch esmc600m" in line


def test_backbones_command_shows_what_is_cached(tiny_hub):
    import json

    cache_tiny_weights("esmc600m")
    rows = {row["id"]: row for row in json.loads(cli_invoke("backbones", "--json").stdout)}
    assert rows["esmc600m"]["cached"] is True and rows["esmc600m"]["default"] is True
    assert rows["esmc300m"]["cached"] is False and rows["esm2_8m"]["cached"] is False
    assert rows["esmc600m"]["license"] == "Cambrian Non-Commercial"
    assert rows["esmc600m"]["weights"] == "EvolutionaryScale/esmc-600m-2024-12"
    table = cli_invoke("backbones").stdout.splitlines()
    header = table[0]
    column = header.index("weights cached")
    cells = {line.split()[0]: line[column:].split()[0] for line in table[1:]}
    assert (cells["esmc600m"], cells["esmc300m"], cells["esm2_8m"]) == ("yes", "no", "no")
