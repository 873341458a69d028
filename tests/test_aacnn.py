"""The built-in aacnn backbone and the bundled model trained on it."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import pytest
import torch

from synnav_cli.backbones.aacnn import C_TERMINAL, N_TERMINAL, AACNNBackbone, AACNNEncoder
from synnav_cli.cli.main import cli
from synnav_cli.data.dataset import column_name
from synnav_cli.modeldir import load_model, resolve_model
from synnav_cli.plugins import backbone_registry, get_backbone
from synnav_cli.resources import bundled_model_path

PROTEINS = {
    # Short, medium and long, so a batch holds several patch alignments and lots of padding.
    "short": "MKWVTFISLLFLFSSAYSRG",  # 20 residues: the shortest that is scored
    "odd": "MLSRAVCGTSRQLAPVLGYLGSRQKHSLPD",
    "medium": "MAAALRSAGVLLRRGLTPGARAAGVQLAALPSRALSTTEVRESRIFAEVKDLLGRHAPQTSAEELRQWAEEQSQKEEAVA" * 2,
    "long": "MSDEEARQSGGSSQAGVVTVSDVQELMRRKEEIEAQIKANYDVLESQKGIGMNEPLVDCEGYPRSDVDLYQVRTARHNIICL" * 4,
}


def test_registered_and_needs_no_weights():
    registry = backbone_registry()
    assert "aacnn" in registry.backbones
    backbone = get_backbone("aacnn")
    assert isinstance(backbone, AACNNBackbone)
    assert backbone.weights_repo is None
    assert backbone.weights_cached() is None
    assert backbone.license == "MIT"
    assert backbone.description


def test_build_encoder_offline_without_any_download():
    backbone = get_backbone("aacnn")
    for pretrained in (True, False):
        encoder = backbone.build_encoder(pretrained=pretrained, offline=True)
        params = sum(p.numel() for p in encoder.parameters())
        assert 10_000 < params < 2_000_000


def test_pretrained_encoder_is_reproducible():
    # A model trained with --freeze stores only the head; its encoder must come back identical.
    backbone = get_backbone("aacnn")
    first = backbone.build_encoder(pretrained=True).state_dict()
    torch.manual_seed(99)
    second = backbone.build_encoder(pretrained=True).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_forward_shapes():
    backbone = get_backbone("aacnn")
    encoder = backbone.build_encoder(pretrained=False).eval()
    batch = backbone.tokenize(list(PROTEINS.values()))
    with torch.no_grad():
        hidden = encoder(batch.input_ids, batch.attention_mask)
    longest = max(len(s) for s in PROTEINS.values())
    assert batch.input_ids.shape == (len(PROTEINS), longest + 2)  # <cls> and <eos>
    assert hidden.shape == (len(PROTEINS), longest + 2, backbone.embedding_dim)
    assert torch.isfinite(hidden).all()


def test_batched_equals_alone():
    """Padding and neighbouring proteins must not change a protein's embedding."""
    backbone = get_backbone("aacnn")
    torch.manual_seed(0)
    encoder = backbone.build_encoder(pretrained=False).eval()
    sequences = list(PROTEINS.values())
    batch = backbone.tokenize(sequences)
    with torch.no_grad():
        together = encoder(batch.input_ids, batch.attention_mask)
        for row, sequence in enumerate(sequences):
            single = backbone.tokenize([sequence])
            alone = encoder(single.input_ids, single.attention_mask)[0]
            mask = single.residue_mask[0]
            assert torch.allclose(together[row, : alone.shape[0]][mask], alone[mask], atol=1e-5), sequence


def test_padding_ids_do_not_matter():
    """Whatever sits beyond the attention mask is never read."""
    backbone = get_backbone("aacnn")
    encoder = backbone.build_encoder(pretrained=False).eval()
    batch = backbone.tokenize([PROTEINS["short"], PROTEINS["long"]])
    scrambled = batch.input_ids.clone()
    padding = ~batch.attention_mask
    scrambled[padding] = torch.randint(4, 24, (int(padding.sum()),))
    with torch.no_grad():
        clean = encoder(batch.input_ids, batch.attention_mask)
        noisy = encoder(scrambled, batch.attention_mask)
    mask = batch.residue_mask
    assert torch.allclose(clean[mask], noisy[mask], atol=1e-6)


def test_terminal_positions_are_seen():
    """The same residues at the N-terminus and further in give different embeddings."""
    backbone = get_backbone("aacnn")
    encoder = backbone.build_encoder(pretrained=False).eval()
    core = "ACDEFGHIKLMNPQRSTVWY" * 3
    padding = "G" * (N_TERMINAL + C_TERMINAL + 8)
    batch = backbone.tokenize([core + padding, padding + core])
    with torch.no_grad():
        hidden = encoder(batch.input_ids, batch.attention_mask)
    assert not torch.allclose(hidden[0].mean(0), hidden[1].mean(0), atol=1e-4)


def test_bundled_model_is_the_default_when_no_user_model_exists():
    assert bundled_model_path() is not None, "the bundled model directory is missing"
    info, how = resolve_model(None)
    assert how == "bundled"
    assert info.meta["backbone"] == "aacnn-ensemble"
    assert info.meta.get("description")
    assert len(info.label_names) == len(info.thresholds) >= 4
    # Trained on the shipped dataset, not on a smoke-test subset.
    assert info.meta["data"]["proteins"]["train"] > 5000
    assert info.meta["metrics"]["test"]["mean"]["roc_auc"] > 0.7
    # The backbone's defaults are the shipped architecture: load_model rebuilds it from them and
    # loads the weights strictly, so any drift in shapes fails here.
    model = load_model(info, get_backbone(info.meta["backbone"]), torch.device("cpu"), offline=True)
    assert len(model.encoder.members) == 3
    assert all(member.dim == AACNNEncoder().dim for member in model.encoder.members)
    assert sum(p.numel() for p in model.parameters()) > 10_000
    assert (info.path / "model.safetensors").stat().st_size < 4_000_000  # a few MB at most


@pytest.mark.parametrize("fmt", ["tsv"])
def test_predict_with_the_bundled_model(runner, tmp_path, fmt):
    fasta = tmp_path / "few.fasta"
    fasta.write_text("".join(f">{name} some description\n{seq}\n" for name, seq in PROTEINS.items()))
    result = runner.invoke(cli, ["predict", str(fasta), "--format", fmt, "--offline"])
    assert result.exit_code == 0, result.output
    info, _ = resolve_model(None)
    # Says what it is using and where better accuracy comes from.
    assert "bundled model" in result.stderr and info.meta["description"] in result.stderr
    assert "synnav train" in result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
    assert [row["id"] for row in rows] == list(PROTEINS)
    assert [int(row["length"]) for row in rows] == [len(s) for s in PROTEINS.values()]
    for row in rows:
        assert row["status"] == "ok"
        for label in info.label_names:
            assert 0.0 <= float(row[label.replace(" ", "_")]) <= 1.0


def _predict_rows(runner, fasta, *extra):
    result = runner.invoke(cli, ["predict", str(fasta), "--format", "tsv", "--offline", *extra])
    assert result.exit_code == 0, result.output
    return result, list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))


def test_a_label_without_training_data_is_never_predicted(runner, small_dataset, tmp_path):
    """small.json with every inhibitory-synapse value made unknown: a label with no data."""
    records = json.loads(small_dataset.read_text())
    for record in records:
        record["labels"]["inhibitory synapse"] = None
    small_dataset = tmp_path / "no-inhibitory.json"
    small_dataset.write_text(json.dumps(records))
    out = tmp_path / "model"
    result = runner.invoke(cli, ["train", "--backbone", "tiny", "--data", str(small_dataset), "--out", str(out),
                                 "--epochs", "1", "--batch-size", "16", "--lr", "3e-3"])
    assert result.exit_code == 0, result.output
    assert "inhibitory synapse" in result.stderr and "cannot learn" in result.stderr
    meta = json.loads((out / "synnav-model.json").read_text())
    assert meta["thresholds"]["inhibitory synapse"] == 1.0
    assert meta["thresholds"]["ER"] < 1.0  # labels with data keep their tuned thresholds
    for split in ("train", "dev", "test"):
        undefined = meta["metrics"][split]["labels"]["inhibitory synapse"]
        assert undefined["known"] == 0
        assert all(undefined[m] is None for m in ("f1", "roc_auc", "pr_auc", "mcc"))
        assert meta["metrics"][split]["mean"]["roc_auc"] is not None  # the mean skips it

    result = runner.invoke(cli, ["evaluate", "--model", str(out), "--data", str(small_dataset), "--format", "json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["labels"]["inhibitory_synapse"]["roc_auc"] is None  # named as predict's column
    assert 0.0 <= scores["mean"]["roc_auc"] <= 1.0

    fasta = tmp_path / "few.fasta"
    fasta.write_text("".join(f">{name}\n{seq}\n" for name, seq in PROTEINS.items()))
    _, rows = _predict_rows(runner, fasta, "--model", str(out))
    assert len(rows) == len(PROTEINS)
    for row in rows:
        assert float(row["inhibitory_synapse"]) == 0.5
        assert "inhibitory_synapse" not in row["predicted"]


def test_bundled_model_on_the_example_fasta(runner):
    """The README's quick start: real proteins, in order, with predictions that make sense."""
    example = Path(__file__).parent.parent / "data" / "example.fasta"
    _, rows = _predict_rows(runner, example)
    ids = [line[1:].split()[0] for line in example.read_text().splitlines() if line.startswith(">")]
    assert [row["id"] for row in rows] == ids
    columns = [column_name(label) for label in resolve_model("bundled")[0].meta["labels"]]
    by_id = {row["id"]: {column: float(row[column]) for column in columns} for row in rows}
    compartments = ("cytosol", "ER", "mitochondrion", "nucleus")
    assert max(compartments, key=by_id["P06748"].get) == "nucleus", by_id["P06748"]  # nucleophosmin
    # Protein disulfide-isomerase (ER lumen) and TOMM20 (mitochondrial outer membrane) score
    # highest of the file in their own compartment.
    assert max(by_id, key=lambda i: by_id[i]["ER"]) == "P07237"
    assert max(by_id, key=lambda i: by_id[i]["mitochondrion"]) == "Q15388"
    for label in next(iter(by_id.values())):  # all six labels are trained: no constant column
        assert len({round(probs[label], 4) for probs in by_id.values()}) > 1, label


def test_docs_table_matches_the_shipped_model():
    """docs/bundled-model.md reports the test metrics the shipped model recorded."""
    doc = (Path(__file__).parent.parent / "docs" / "bundled-model.md").read_text()
    lines = doc.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| label |"))
    table = [line for line in itertools.takewhile(lambda line: line.startswith("|"), lines[start:])]
    columns = [c.strip() for c in table[0].strip("|").split("|")]
    info, _ = resolve_model("bundled")
    test = info.meta["metrics"]["test"]["labels"]
    rows = [line for line in table if line.split("|")[1].strip() in test]
    assert len(rows) == len(test)
    for line in rows:
        cells = dict(zip(columns, (c.strip() for c in line.strip("|").split("|"))))
        metrics = test[cells["label"]]
        for key, column in (("roc_auc", "bundled ROC-AUC"), ("f1", "bundled F1")):
            expected = "n/a" if metrics[key] is None else f"{metrics[key]:.3f}"
            assert cells[column] == expected, (cells["label"], column)


def _global_features(sequences: list[str]) -> torch.Tensor:
    from synnav_cli.backbones.aacnn import GlobalFeatures

    batch = get_backbone("aacnn").tokenize(sequences)
    features = GlobalFeatures()(batch.input_ids, batch.attention_mask)
    assert features.shape == (len(sequences), GlobalFeatures.size)
    return features


def test_global_features_describe_the_protein():
    soluble = "MSDEKRQNGTPESKDDQRGNEKST" * 4  # no hydrophobic window at all
    signal = "MKLLLLLVLLAIFLLLAGASA" + soluble  # a hydrophobic N-terminal stretch
    two_helices = soluble + "LLLLIVLLFAVLLLIALLV" + soluble + "VLLIALLFVLLAIVLLLAL" + soluble
    tiny = "MKDE"  # shorter than one window: still finite
    features = _global_features([soluble, signal, two_helices, tiny])
    assert torch.isfinite(features).all()
    whole = features[:, :20] / 10.0
    assert torch.allclose(whole.sum(dim=1), torch.ones(4), atol=1e-5)
    amino_acids = "ACDEFGHIKLMNPQRSTVWY"
    for row, sequence in enumerate([soluble, signal, two_helices]):
        first, last = sequence[:N_TERMINAL], sequence[-C_TERMINAL:]
        expected = [10 * first.count(a) / N_TERMINAL for a in amino_acids]
        expected += [10 * last.count(a) / C_TERMINAL for a in amino_acids]
        assert features[row, 20:60].tolist() == pytest.approx(expected, abs=1e-5)
    log_length, peak, share, has_signal, segments = features[:, 60:].T
    assert log_length[2] > log_length[0] > log_length[3]
    assert peak[1] > peak[0] and peak[2] > peak[0]
    assert has_signal.tolist() == [0.0, 1.0, 0.0, 0.0]
    assert (segments * 4).round().tolist() == [0.0, 1.0, 2.0, 0.0]
    assert share[0] == 0 and share[2] > 0


def test_length_is_seen():
    """Averaging per-residue features forgets length; the global descriptors keep it."""
    backbone = get_backbone("aacnn")
    torch.manual_seed(0)
    encoder = backbone.build_encoder(pretrained=False).eval()
    unit = "MSDEEARQSGGSSQAGVVTVSDVQELMRRKEEIEAQIKANYDVLESQKGIGMNEPLVDCEGYPRSDVDLYQ"
    batch = backbone.tokenize([unit * 2, unit * 6])
    with torch.no_grad():
        hidden = encoder(batch.input_ids, batch.attention_mask)
    mask = batch.residue_mask
    pooled = [hidden[i][mask[i]].mean(dim=0) for i in range(2)]
    assert not torch.allclose(pooled[0], pooled[1], atol=1e-3)


def test_implausibility_score_is_one_feature_the_head_reads():
    backbone = get_backbone("aacnn")
    encoder = backbone.build_encoder(pretrained=False).eval()
    batch = backbone.tokenize([PROTEINS["medium"], PROTEINS["long"]])
    with torch.no_grad():
        start = encoder(batch.input_ids, batch.attention_mask)[:, :, -1]
        encoder.gate.bias.fill_(-5.0)  # "implausible"
        high = encoder(batch.input_ids, batch.attention_mask)[:, :, -1]
    mask = batch.residue_mask
    assert torch.allclose(start[mask], torch.full_like(start[mask], 0.0486), atol=1e-3)
    assert torch.allclose(high[mask], torch.full_like(high[mask], 5.0067), atol=1e-3)


def test_global_features_stay_fp32_on_bf16_weights():
    """--precision bf16 casts the encoder; the descriptors must not lose counts or digits."""
    from synnav_cli.backbones.aacnn import GlobalFeatures

    long_protein = PROTEINS["long"] * 2  # 672 residues: bf16 counts integers exactly only to 256
    batch = get_backbone("aacnn").tokenize([long_protein, PROTEINS["short"]])
    exact = GlobalFeatures()(batch.input_ids, batch.attention_mask)
    cast = GlobalFeatures().to(torch.bfloat16)(batch.input_ids, batch.attention_mask)
    assert cast.dtype == torch.float32
    assert torch.equal(cast, exact)
