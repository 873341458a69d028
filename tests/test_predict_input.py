"""What predict does with the input as a whole: validated before anything is scored, invalid
records kept with --skip-invalid, nucleotide and peptide records flagged, untrained labels never
called."""

from __future__ import annotations

import json

import launch
import pytest
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.domain.assess import DOMAIN_COLUMNS
from synnav_cli.predict import run as predict_run

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture
def model(tmp_path):
    return launch.tiny_model_dir(tmp_path / "m")


def _proteins(count: int, bad: dict[int, str] | None = None) -> str:
    """``count`` records p1..pN of 30-60 residues; ``bad`` replaces some sequences (1-based)."""
    import random

    rng = random.Random(1)
    lines = []
    for i in range(1, count + 1):
        sequence = "".join(rng.choices(RESIDUES, k=rng.randint(30, 60)))
        lines += [f">p{i}", (bad or {}).get(i, sequence)]
    return "\n".join(lines) + "\n"


def test_a_bad_record_late_in_the_input_fails_before_anything_is_scored(runner, model, tmp_path, monkeypatch):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(_proteins(5000, {5000: "MKV123"}))
    scored = []
    monkeypatch.setattr(predict_run, "score_sequences", lambda *a, **k: scored.append(1))
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    assert result.exit_code == 1 and result.stdout == "" and scored == []
    assert "1 of 5,000 records" in result.stderr and "record 5,000: record 'p5000'" in result.stderr


def test_every_problem_is_reported_together_then_counted(runner, model, tmp_path):
    bad = {i: "MK1" for i in range(3, 40, 3)}  # 13 bad records
    fasta = tmp_path / "in.fasta"
    fasta.write_text(_proteins(40, bad))
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    one_error_line(result, "13 of 40 records")
    assert result.stdout == ""
    assert result.stderr.count("record ") == 5 + 5 and "... and 8 more" in result.stderr  # 5 shown
    assert len(result.stderr.strip().splitlines()) == 1


def test_skip_invalid_keeps_every_record_in_order_with_its_status(runner, model, tmp_path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(_proteins(6, {2: "MK1", 4: "ACGTACGTACGTACGTACGTAC", 5: "MKVL"})
                     + ">p1\nMKVLAAGIVGLLLAAQPAMAEELKK\n")  # a duplicate identifier last
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--skip-invalid",
                                 "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["p1", "p2", "p3", "p4", "p5", "p6", "p1"]
    statuses = [r["status"] for r in rows]
    assert statuses[0] == statuses[2] == statuses[5] == "ok"
    assert statuses[1].startswith("invalid: ") and "amino-acid" in statuses[1]
    assert statuses[3] == "nucleotide" and statuses[4] == "short"
    assert statuses[6].startswith("invalid: duplicate identifier")
    assert all(r["predicted"] == [] and set(r["probabilities"].values()) == {None}
               for r in rows if r["status"] != "ok")
    assert "2 of 7 records are invalid" in result.stderr


def test_skip_invalid_rows_give_the_length_of_the_record_as_it_was_given(runner, model, tmp_path):
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">p1\nMKVLAAGIVGLLLAAQPAMAEELKKW\n>p2\nMKV1LL\nAAG\n>p3\n>p1\nMKVLAAGIVGLLLAAQPAMA*\n")
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--skip-invalid",
                                 "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"].split(":")[0] for r in rows] == ["ok", "invalid", "invalid", "invalid"]
    # The residues the record holds, bad ones included; a duplicate's as it would be scored.
    assert [r["length"] for r in rows] == [26, 9, 0, 20]


def test_standard_input_is_validated_whole_too(runner, model):
    result = runner.invoke(cli, ["predict", "-", "--model", str(model)], input=_proteins(3000, {2999: "MK1"}))
    assert result.exit_code == 1 and result.stdout == "" and "record 2,999" in result.stderr


def test_a_file_of_nucleotide_sequences_is_one_line(runner, model, tmp_path):
    fasta = tmp_path / "genes.fasta"
    fasta.write_text(">g1\nATGGCTAGCTAGGATCGATCGATCG\n>g2\nATGCCCGGGTTTAAACCCGGGTTTAAA\n")
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    assert result.exit_code == 1 and "nucleotide sequences" in result.stderr and result.stdout == ""


def test_a_label_with_no_training_data_is_never_called_whatever_the_threshold(runner, tmp_path):
    records = json.loads((launch.TESTS / "data" / "small.json").read_text())
    for record in records:
        record["labels"]["nucleus"] = None
    data = tmp_path / "no-nucleus.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "model"
    trained = runner.invoke(cli, ["train", "-b", "tiny", "-d", str(data), "--out", str(out), "--epochs", "1",
                                  "--device", "cpu", "-q"])
    assert trained.exit_code == 0, trained.output
    fasta = tmp_path / "in.fasta"
    fasta.write_text(_proteins(20))
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(out), "--threshold", "0",
                                 "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all("nucleus" not in r["predicted"] for r in rows)
    assert all("cytosol" in r["predicted"] for r in rows)  # threshold 0 calls every trained label


def test_output_columns_have_no_spaces_and_thresholds_take_both_spellings(runner, tmp_path):
    model = launch.tiny_model_dir(tmp_path / "m", labels=["ER", "excitatory synapse"])
    fasta = tmp_path / "in.fasta"
    fasta.write_text(_proteins(3))
    header = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)]).stdout.splitlines()[0]
    assert header.split("\t") == ["id", "length", "ER", "excitatory_synapse", "predicted", "status", "top",
                                  "top_probability", "calibration", *DOMAIN_COLUMNS]
    for spelling in ("excitatory_synapse=0", "excitatory synapse=0", "Excitatory_Synapse=0"):
        result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--threshold", spelling,
                                     "--format", "jsonl"])
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert all("excitatory_synapse" in r["predicted"] for r in rows)
        assert set(rows[0]["probabilities"]) == {"ER", "excitatory_synapse"}


def test_evaluate_takes_a_dataset_whose_labels_use_underscores(runner, tmp_path):
    model = launch.tiny_model_dir(tmp_path / "m", labels=["ER", "excitatory synapse"])
    records = json.loads((launch.TESTS / "data" / "small.json").read_text())
    for record in records:
        labels = record["labels"]
        record["labels"] = {"ER": labels["ER"], "excitatory_synapse": labels["excitatory synapse"]}
    data = tmp_path / "underscores.json"
    data.write_text(json.dumps(records))
    result = runner.invoke(cli, ["evaluate", "--model", str(model), "--data", str(data), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["labels"]) == {"ER", "excitatory_synapse"}


def test_messages_about_standard_input_call_it_so(runner, model):
    """Standard input is spooled to a file to be read twice; messages still name standard input,
    for plain predictions and for --compare alike."""
    for extra in ([], ["--compare"]):
        for text in ("not fasta\n", ">a\nMKVLAAGIVGLLLAAQPAMA\n>b\nMK1\n"):
            result = runner.invoke(cli, ["predict", "-", "--model", str(model), *extra], input=text)
            line = one_error_line(result, "standard input")
            assert "synnav-stdin" not in line
