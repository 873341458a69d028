"""What predict writes: every scored protein names its most likely label (`top`), and the
thresholds behind the calls are said on stderr."""

from __future__ import annotations

import csv
import io
import json

import launch
import pytest
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.modeldir import METADATA_FILE

LABELS = ["ER", "excitatory synapse", "nucleus"]
PROTEINS = {
    "p1": "MKVLAAGIVGLLLAAQPAMAEELKKWQS",
    "p2": "MSTNPKPQRKTKRNTNRRPQDVKFPGGGQIVGGVYLLPRRG",
    "p3": "MDDDIAALVVDNGSGMCKAGFAGDDAPRAVFPSIVGRPRHQ",
}


@pytest.fixture
def model(tmp_path):
    """A tiny model whose thresholds no protein reaches (the tiny head gives about 0.5)."""
    path = launch.tiny_model_dir(tmp_path / "m", labels=LABELS)
    meta = json.loads((path / METADATA_FILE).read_text())
    meta["thresholds"] = {"ER": 0.91, "excitatory synapse": 0.93, "nucleus": 0.97}
    (path / METADATA_FILE).write_text(json.dumps(meta))
    return path


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "in.fasta"
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in PROTEINS.items()))
    return path


def _table(text: str, delimiter: str = "\t") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


# Item 4: a most likely label for every scored protein, and the thresholds where the calls are


def test_every_scored_protein_names_its_most_likely_label_even_without_a_call(runner, model, tmp_path):
    fasta = tmp_path / "mixed.fasta"
    fasta.write_text("".join(f">{n}\n{s}\n" for n, s in PROTEINS.items())
                     + ">short\nMKVLA\n>dna\nATGGCTAGCTAGGATCGATCGATCG\n>bad\nMK1VLAAGIVGLLLAAQPAMA\n")
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--skip-invalid"])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split("\t")
    columns = ["ER", "excitatory_synapse", "nucleus"]
    # The existing columns keep their places; the new ones come last.
    assert header == ["id", "length", *columns, "predicted", "status", "top", "top_probability"]
    rows = _table(result.stdout)
    assert [row["id"] for row in rows] == ["p1", "p2", "p3", "short", "dna", "bad"]
    for row in rows[:3]:
        assert row["status"] == "ok" and row["predicted"] == ""  # no label reaches its threshold
        best = max(columns, key=lambda name: float(row[name]))
        assert row["top"] == best and row["top_probability"] == row[best]
        assert 0 < float(row["top_probability"]) < 1
    for row in rows[3:]:  # not scored: nothing to name
        assert row["top"] == "" and row["top_probability"] == ""

    jsonl = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--skip-invalid",
                                "--format", "jsonl"])
    assert jsonl.exit_code == 0, jsonl.output
    records = [json.loads(line) for line in jsonl.stdout.splitlines()]
    for record, row in zip(records, rows, strict=True):
        assert list(record) == ["id", "length", "probabilities", "predicted", "status", "top",
                                "top_probability"]
        if row["top"]:
            assert record["top"] == row["top"]
            assert record["top_probability"] == record["probabilities"][row["top"]]
        else:
            assert record["top"] is None and record["top_probability"] is None


def test_a_label_without_training_data_is_never_the_top(runner, model, fasta):
    import torch
    from safetensors.torch import load_file, save_file

    weights = model / "model.safetensors"
    tensors = load_file(weights)
    head = [name for name in tensors if name.endswith("linear.weight") and tensors[name].shape[0] == 3]
    assert len(head) == 1
    bias = head[0].removesuffix("weight") + "bias"
    # nucleus: a blank head row (no training data: always 0.5); ER and excitatory synapse far
    # below it, so that nucleus would be the most likely label if it counted.
    tensors[head[0]][2] = 0
    tensors[bias] = torch.tensor([-5.0, -3.0, 0.0])
    save_file(tensors, str(weights))
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(r["probabilities"]["nucleus"] == 0.5 for r in records)
    assert {r["top"] for r in records} == {"excitatory_synapse"}
    assert "nucleus never (no training data)" in result.stderr


def test_the_thresholds_in_use_are_one_line_on_stderr_and_the_table_stays_a_table(runner, model, fasta):
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Thresholds:")]
    assert len(lines) == 1, result.stderr
    assert "ER 0.91, excitatory_synapse 0.93, nucleus 0.97" in lines[0]
    # stdout is the header and one row per protein, nothing else: pandas and R read it as it is.
    assert len(result.stdout.splitlines()) == 1 + len(PROTEINS)
    assert result.stdout.startswith("id\t")

    overridden = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--threshold", "ER=0.3"])
    assert overridden.exit_code == 0, overridden.output
    assert "Thresholds: ER 0.3, excitatory_synapse 0.93, nucleus 0.97" in overridden.stderr

    pairs = fasta.with_name("pairs.fasta")
    pairs.write_text(f">p1\n{PROTEINS['p1']}\n>p1_mut_K2R\nMRVLAAGIVGLLLAAQPAMAEELKKWQS\n")
    compare = runner.invoke(cli, ["predict", str(pairs), "--model", str(model), "--compare"])
    assert compare.exit_code == 0, compare.output
    assert "Thresholds: ER 0.91, excitatory_synapse 0.93, nucleus 0.97" in compare.stderr
    quiet = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "-q"])
    assert quiet.exit_code == 0 and "Thresholds" not in quiet.stderr
