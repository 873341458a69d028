"""The Python API (docs/python.md): load a model once, predict and embed in memory, with the
CLI's checks, statuses, --long policies, numbers and messages."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import launch
import numpy as np
import pandas as pd  # the test extra installs it (pyproject.toml)
import pytest
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

import synnav_cli
from synnav_cli import SynnavError, load_model
from synnav_cli.cli.main import cli
from synnav_cli.data.fasta import read_fasta
from synnav_cli.errors import UserError
from synnav_cli.predict.writer import original_text

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "python.md"
LONG = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEV"  # 70 > 50
# Every status predict gives, an id a spreadsheet would run, and a protein over the limit.
MIXED = {
    "p1": "MKVLAAGIVGLLLAAQPAMAEELKKWQS",
    "=cmd": "MSTNPKPQRKTKRNTNRRPQDVKFPGGGQIVGGVYLLPRRG",
    "long": LONG,
    "short": "MKVLA",
    "dna": "ATGGCTAGCTAGGATCGATCGATCG",
    "bad": "MK1VLAAGIVGLLLAAQPAMA",
    "p2": "mdddiaalvvdngsgmckagfagddaprav fpsivgrprhq*",
}


def assert_frame_is_tsv(frame, tsv: str) -> None:
    """``frame`` holds the TSV's columns, in order, and its values, whatever the columns are:
    numbers equal to the cells' (probabilities to their 4 decimals), text as written (less the
    ``'`` a formula-like cell gets), missing values where the cells are empty."""
    rows = list(csv.reader(io.StringIO(tsv), delimiter="\t"))
    header, cells = rows[0], rows[1:]
    assert list(frame.columns) == header
    assert len(frame) == len(cells) > 0
    for position, column in enumerate(header):
        values = frame.iloc[:, position].tolist()
        for row, (value, cell) in enumerate(zip(values, (r[position] for r in cells))):
            where = (column, row, value, cell)
            if cell == "":
                assert value == "" or pd.isna(value), where
            elif isinstance(value, float):
                assert value == float(cell), where
            elif isinstance(value, int):
                assert str(value) == cell, where
            else:
                assert value == original_text(cell), where


def _cli_tsv(runner, *args: str) -> str:
    result = runner.invoke(cli, ["predict", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture
def tiny(tmp_path):
    """A tiny model scoring 50 residues at most, so that `long` is over its limit."""
    return launch.tiny_model_dir(tmp_path / "tiny", max_length=50)


@pytest.fixture
def mixed_fasta(tmp_path):
    path = tmp_path / "mixed.fasta"
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in MIXED.items()))
    return path


# The docs' example, and the table against `synnav predict data/example.fasta`


def test_the_docs_python_blocks_run(monkeypatch, capsys):
    """Every ```python block of docs/python.md, in order, in one namespace, with the bundled
    model; the first prints the table the page shows."""
    blocks = re.findall(r"^```python\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 4 and "from synnav_cli import load_model" in blocks[0]
    assert "model.predict([" in blocks[0]
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": "docs_python"}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)  # noqa: S102 - our own docs
    assert isinstance(namespace["table"], pd.DataFrame)
    assert namespace["vectors"].shape[0] == len(namespace["sequences"])
    printed = capsys.readouterr().out
    shown = re.findall(r"^```text\n(.*?)^```", DOCS.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)
    assert shown[0] in printed  # the table under the first block
    assert "records in the input are invalid" in printed


def test_the_dataframe_equals_the_tsv_of_synnav_predict(runner, monkeypatch):
    monkeypatch.chdir(ROOT)
    tsv = _cli_tsv(runner, "data/example.fasta")
    frame = load_model("bundled").predict("data/example.fasta")
    assert_frame_is_tsv(frame, tsv)
    labels = load_model("bundled").labels
    assert all(frame[label].dtype == np.float64 for label in labels)
    assert frame["length"].dtype == np.int64


@pytest.mark.parametrize("policy", ["truncate", "window", "skip"])
def test_every_status_and_long_policy_is_the_clis(runner, tiny, mixed_fasta, policy):
    tsv = _cli_tsv(runner, str(mixed_fasta), "--model", str(tiny), "--skip-invalid",
                   "--long", policy)
    model = load_model(str(tiny))
    from_file = model.predict(mixed_fasta, long=policy, skip_invalid=True)
    assert_frame_is_tsv(from_file, tsv)
    in_memory = model.predict(MIXED, long=policy, skip_invalid=True)
    assert in_memory.equals(from_file)
    statuses = dict(zip(in_memory["id"], in_memory["status"]))
    assert statuses["=cmd"] == "ok" and statuses["short"] == "short"
    assert statuses["dna"] == "nucleotide" and statuses["bad"].startswith("invalid: ")
    assert statuses["long"].startswith({"truncate": "truncated", "window": "windowed:",
                                        "skip": "skipped"}[policy])


def test_domain_false_is_no_domain(runner, tiny, mixed_fasta):
    tsv = _cli_tsv(runner, str(mixed_fasta), "--model", str(tiny), "--skip-invalid", "--no-domain")
    frame = load_model(tiny).predict(mixed_fasta, skip_invalid=True, domain=False)
    assert_frame_is_tsv(frame, tsv)
    assert len(frame.columns) < len(load_model(tiny).predict(MIXED, skip_invalid=True).columns)


def test_every_input_form_gives_the_same_table(tiny, tmp_path):
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    proteins = {name: MIXED[name] for name in ("p1", "=cmd", "long", "p2")}
    model = load_model(tiny)
    expected = model.predict(proteins)
    packed = tmp_path / "in.fasta.gz"
    packed.write_bytes(gzip.compress("".join(f">{k} a description\n{v}\n" for k, v in proteins.items()).encode()))
    for given in (
        list(proteins.items()),
        (pair for pair in proteins.items()),
        pd.Series(proteins),
        [SeqRecord(Seq(v), id=k) for k, v in proteins.items()],
        {k: Seq(v) for k, v in proteins.items()},
        packed,
        str(packed),
    ):
        got = model.predict(given)
        assert got.equals(expected), type(given)
    assert expected["id"].tolist() == list(proteins)  # in input order
    assert expected["predicted"].map(type).eq(str).all()
    # A Series' default index gives ids 0, 1, ...
    assert model.predict(pd.Series(list(proteins.values())))["id"].tolist() == ["0", "1", "2", "3"]


def test_embed_is_synnav_embed_in_input_order(runner, tiny, tmp_path):
    fasta = launch.write_fasta(tmp_path / "in.fasta", 7, lengths=(20, 60))
    out = tmp_path / "emb.npz"
    result = runner.invoke(cli, ["embed", str(fasta), "--model", str(tiny), "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = np.load(out)
    model = load_model(tiny)
    vectors = model.embed(fasta)
    assert vectors.dtype == np.float32 and vectors.shape == saved["embeddings"].shape
    np.testing.assert_allclose(vectors, saved["embeddings"], atol=1e-6)
    pairs = [(record.id, record.sequence) for record in read_fasta(fasta)]
    assert [pair[0] for pair in pairs] == list(saved["ids"])
    np.testing.assert_allclose(model.embed(pairs[::-1]), vectors[::-1], atol=1e-5)


# Errors: one type, the CLI's message


def test_an_invalid_record_is_the_clis_message_as_one_error(runner, tiny, tmp_path):
    path = tmp_path / "bad.fasta"
    path.write_text(">a\nMKVLAAGIVGLLLAAQPAMAEE\n>b\nMK1VLAAGIVGLLLAAQPAMA\n>a\nMKVLAAGIVGLLLAAQPAMAEE\n")
    result = runner.invoke(cli, ["predict", str(path), "--model", str(tiny)])
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if x.startswith("Error: "))
    model = load_model(tiny)
    with pytest.raises(SynnavError) as raised:
        model.predict(path)
    assert f"Error: {raised.value}" == line
    assert isinstance(raised.value, UserError) and raised.value.__cause__ is None
    with pytest.raises(SynnavError) as raised:
        model.predict([("a", "MKVLAAGIVGLLLAAQPAMAEE"), ("b", "MK1VLAAGIVGLLLAAQPAMA"),
                       ("a", "MKVLAAGIVGLLLAAQPAMAEE")])
    assert str(raised.value) == line.removeprefix("Error: ").replace(str(path), "the input")
    with pytest.raises(SynnavError, match="invalid"):
        model.embed({"b": "MK1VLAAGIVGLLLAAQPAMA"})


@pytest.mark.parametrize("call, needle", [
    (lambda m: m.predict({"a": "ATGGCTAGCTAGGATCGATCGATCG"}), "nucleotide sequences"),
    (lambda m: m.predict([]), "no records to predict"),
    (lambda m: m.embed({}), "no records to embed"),
    (lambda m: m.predict({"a": "MKVLAAGIVGLLLAAQPAMAEE"}, long="cut"), "long-protein policy 'cut'"),
    (lambda m: m.predict("nothere.fasta"), "file not found: nothere.fasta"),
    (lambda m: m.predict("MKVLAAGIVGLLLAAQPAMAEE"), "give sequences as a dict"),
    (lambda m: m.predict(["MKVLAAGIVGLLLAAQPAMAEE"]), "not an (id, sequence) pair"),
    (lambda m: m.predict({1.5: "MKVLAAGIVGLLLAAQPAMAEE"}), "an id is a string, not float"),
    (lambda m: m.predict({"a": 42}), "a sequence is a string, not int"),
    (lambda m: m.predict(pd.DataFrame({"id": ["a"], "sequence": ["MKV"]})), "not the DataFrame"),
    (lambda m: m.predict(42), "not int"),
])
def test_what_the_api_refuses_is_one_synnav_error(tiny, call, needle):
    model = load_model(tiny)
    with pytest.raises(SynnavError) as raised:
        call(model)
    assert needle in str(raised.value) and "\n" not in str(raised.value)


def test_a_missing_sequence_is_an_invalid_record(tiny):
    table = load_model(tiny).predict(pd.Series({"a": "MKVLAAGIVGLLLAAQPAMAEE", "b": None}),
                                     skip_invalid=True)
    assert table["status"].tolist() == ["ok", "invalid: record 'b' has an empty sequence"]


def test_load_model_takes_what_model_takes_and_says_it_as_the_cli(runner, tiny, tmp_path):
    result = runner.invoke(cli, ["predict", str(ROOT / "data" / "example.fasta"), "--model",
                                 "no-such-model"])
    line = next(x for x in result.output.splitlines() if x.startswith("Error: "))
    with pytest.raises(SynnavError) as raised:
        load_model("no-such-model")
    assert f"Error: {raised.value}" == line
    with pytest.raises(SynnavError):  # a Hub reference goes where --model's goes
        load_model("hf:no-such-org/no-such-model", offline=True)
    for bad in ({"device": "quantum"}, {"precision": "fp8"}, {"thresholds": {"nope": 0.3}},
                {"thresholds": 2.0}, {"threads": 0}, {"max_tokens": -1}):
        with pytest.raises(SynnavError):
            load_model(tiny, **bad)
    model = load_model(tiny, thresholds={"ER": 0.0, "mitochondrion": 1.0}, device="cpu")
    assert model.labels == ["cytosol", "ER", "mitochondrion"]
    assert model.thresholds["ER"] == 0.0 and model.thresholds["mitochondrion"] == 1.0
    table = model.predict({"a": "MKVLAAGIVGLLLAAQPAMAEE"})
    assert "ER" in table["predicted"][0].split(";")
    assert model.name == "tiny" and model.path == tiny and model.max_length == 50
    assert "tiny" in repr(model)


def test_without_pandas_predict_is_one_line_and_embed_still_works(tiny, monkeypatch):
    model = load_model(tiny)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError
    with pytest.raises(SynnavError) as raised:
        model.predict({"a": "MKVLAAGIVGLLLAAQPAMAEE"})
    assert "pandas is not installed" in str(raised.value) and ".[pandas]" in str(raised.value)
    assert model.embed({"a": "MKVLAAGIVGLLLAAQPAMAEE"}).shape[0] == 1


# Quiet by default, progress when asked


def test_nothing_on_stderr_but_warnings_unless_progress_is_asked_for(tiny, capsys):
    model = load_model(tiny)
    model.predict({"a": "MKVLAAGIVGLLLAAQPAMAEE"})
    model.embed({"a": "MKVLAAGIVGLLLAAQPAMAEE"})
    assert capsys.readouterr().err == ""
    model.predict({"a": "MKVLAAGIVGLLLAAQPAMAEE", "b": "MK1"}, skip_invalid=True)
    assert capsys.readouterr().err.startswith("Warning: 1 of 2 records are invalid")
    model.predict({"a": "MKVLAAGIVGLLLAAQPAMAEE"}, progress=True)
    assert "predict" in capsys.readouterr().err
    model.embed({"a": "MKVLAAGIVGLLLAAQPAMAEE"}, progress=True)
    assert "embed" in capsys.readouterr().err


def test_the_api_leaves_the_cli_verbosity_as_it_was(tiny):
    from synnav_cli import console

    console.set_verbosity(verbose=True)
    load_model(tiny).predict({"a": "MKVLAAGIVGLLLAAQPAMAEE"})
    assert console._level == 2


# Exported lazily from the package root


def test_the_api_is_exported_from_the_root_without_slowing_the_cli():
    from synnav_cli import api

    assert synnav_cli.load_model is api.load_model and synnav_cli.Model is api.Model
    assert synnav_cli.SynnavError is SynnavError and issubclass(SynnavError, UserError)
    assert {"load_model", "Model", "SynnavError"} <= set(synnav_cli.__all__) & set(dir(synnav_cli))
    probe = ("import sys, synnav_cli; synnav_cli.SynnavError; synnav_cli.__version__; "
             "print(json.dumps('torch' in sys.modules))")
    result = subprocess.run([sys.executable, "-c", "import json; " + probe], capture_output=True,
                            text=True, timeout=120, check=True)
    assert json.loads(result.stdout) is False, "the error type alone must not import torch"
    with pytest.raises(AttributeError):
        synnav_cli.no_such_name  # noqa: B018


def test_nan_and_none_are_not_confused_with_text(tiny):
    table = load_model(tiny).predict({"NA": "MKVLAAGIVGLLLAAQPAMAEE", "None": "MKV"})
    assert table["id"].tolist() == ["NA", "None"]
    assert math.isnan(table["top_probability"][1]) and table["predicted"][1] == ""
