"""What predict writes: every scored protein names its most likely label (`top`), the thresholds
behind the calls are said on stderr, and `--out`'s suffix picks the format and the compression."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma

import launch
import pytest
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.modeldir import METADATA_FILE
from synnav_cli.predict import run as predict_run

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
    assert header == ["id", "length", *columns, "predicted", "status", "top", "top_probability",
                      "calibration", "nearest_training", "identity", "coverage", "embedding_distance",
                      "domain"]
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
                                "top_probability", "calibration", "nearest_training", "identity",
                                "coverage", "embedding_distance", "domain"]
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


# Item 5: --out's suffix picks the format and the compression


def _read(path) -> str:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix, open)
    with opener(path, "rt", encoding="utf-8", newline="") as handle:
        return handle.read()


def test_the_out_suffix_picks_the_format_and_the_compression(runner, model, fasta, tmp_path):
    stdout = {fmt: runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--format", fmt]).stdout
              for fmt in ("tsv", "csv", "jsonl")}
    assert stdout["csv"].startswith("id,length,") and json.loads(stdout["jsonl"].splitlines()[0])["id"] == "p1"
    cases = {
        "out.tsv": "tsv", "OUT.CSV": "csv", "out.jsonl": "jsonl", "out.ndjson": "jsonl", "out.txt": "tsv",
        "out": "tsv", "out.tsv.gz": "tsv", "out.csv.gz": "csv", "out.jsonl.gz": "jsonl",
        "out.csv.bz2": "csv", "out.tsv.xz": "tsv",
    }
    for name, fmt in cases.items():
        out = tmp_path / name
        result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "-o", str(out)])
        assert result.exit_code == 0, (name, result.output)
        assert result.stdout == ""
        assert _read(out) == stdout[fmt], name
        magic = {".gz": b"\x1f\x8b", ".bz2": b"BZh", ".xz": b"\xfd7zXZ"}.get(out.suffix)
        if magic is not None:
            assert out.read_bytes().startswith(magic), name
        assert not list(tmp_path.glob(f"{name}.partial*")), name
    # No temporary file name inside the gzip header.
    assert b".partial" not in (tmp_path / "out.tsv.gz").read_bytes()[:64]

    # --format agrees with the suffix, or names what an unknown suffix holds.
    for name, fmt in (("agree.csv", "csv"), ("agree.jsonl.gz", "jsonl"), ("results.dat", "jsonl")):
        out = tmp_path / name
        result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--format", fmt, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert _read(out) == stdout[fmt], name


@pytest.mark.parametrize(("args", "needles"), [
    (["--format", "csv", "-o", "{tmp}/out.tsv"], ["--format csv", "out.tsv", "tsv"]),
    (["--format", "tsv", "-o", "{tmp}/out.jsonl.gz"], ["--format tsv", "jsonl"]),
    (["-o", "{tmp}/out.json"], ["out.json", "JSON lines", ".jsonl"]),
    (["-o", "{tmp}/out.csv", "--raw-ids"], ["--raw-ids", "csv"]),
    (["--compare", "--format", "jsonl", "-o", "{tmp}/out.csv"], ["--format jsonl", "csv"]),
    (["--shard", "1/2", "-o", "{tmp}/part-1.tsv.gz"], ["--shard", "synnav merge", "compression"]),
])
def test_a_format_the_out_suffix_contradicts_is_one_line_before_the_model_loads(
        runner, model, fasta, tmp_path, monkeypatch, args, needles):
    def never(*a, **k):
        raise AssertionError("the model loaded")

    monkeypatch.setattr(predict_run, "load_for_scoring", never)
    monkeypatch.setattr("synnav_cli.scoring.load.load_for_scoring", never)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), *args])
    one_error_line(result, *needles)
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fasta", "m"]


def test_an_interrupted_compressed_out_resumes_to_the_same_file(runner, model, tmp_path, monkeypatch):
    fasta = launch.write_fasta(tmp_path / "many.fasta", 45, lengths=(20, 60))
    whole = tmp_path / "whole.tsv.gz"
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "-o", str(whole)])
    assert result.exit_code == 0, result.output

    monkeypatch.setattr(predict_run, "CHUNK_RECORDS", 10)
    original, calls = predict_run.score_sequences, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    out = tmp_path / "out.tsv.gz"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predict_run, "score_sequences", interrupted)
        first = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "-o", str(out)])
    assert first.exit_code == 130 and not out.exists()
    partial = out.with_name("out.tsv.gz.partial")
    assert len(partial.read_text().splitlines()) == 1 + 20  # plain rows until the run completes
    second = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "-o", str(out)])
    assert second.exit_code == 0, second.output
    assert "20 records already done" in second.output
    assert out.read_bytes() == whole.read_bytes()
    assert gzip.decompress(out.read_bytes()).decode().count("\n") == 46
    assert not partial.exists() and not out.with_name("out.tsv.gz.partial.json").exists()
