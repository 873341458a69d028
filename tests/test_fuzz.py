"""Bad input never produces a traceback: hypothesis throws malformed FASTA, malformed dataset
files, odd characters, huge and empty records at the readers and at the CLI.

The readers either return valid data or raise UserError; the CLI either succeeds or exits 1 with
one line, ``Error: ...``, on stderr.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.data.dataset import read_dataset
from synnav_cli.data.fasta import AMINO_ACIDS, read_fasta
from synnav_cli.errors import UserError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CLI_FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Text that looks like FASTA often enough to get past the first checks: headers, residues,
# lower case, stop codons, blank lines, CR, tabs, NUL, non-ASCII letters and emoji.
PIECES = st.sampled_from([">", ">p1", ">p1 desc", "> ", ">\t", "\n", "\r\n", "\r", "", " ", "\t", "MKV", "mkv",
                          "ACDEFGHIKLMNPQRSTVWY", "XBZJUO", "*", "**", "-", ".", "1", "\x00", "\u00e9", "\u212b",
                          "\U0001f9ec", ">p2\n", ">p1\nMK\n", "\ufeff", "\u2028"])
FASTA_TEXT = st.one_of(st.lists(PIECES, max_size=30).map("".join), st.text(max_size=200))


def _fasta_outcome(source) -> list:
    try:
        return list(read_fasta(source))
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        return []


@FUZZ
@given(FASTA_TEXT)
@example("")
@example(">a\n\n>b\nMK\n")  # an empty record
@example(">a\nMK\n>a\nMK\n")  # a duplicate identifier
def test_read_fasta_returns_valid_records_or_raises_user_error(text):
    records = _fasta_outcome(io.StringIO(text))
    assert len({r.id for r in records}) == len(records)
    for record in records:
        assert record.id and not any(c.isspace() for c in record.id[:1])
        assert record.sequence and set(record.sequence) <= AMINO_ACIDS


@FUZZ
@given(st.binary(max_size=300))
def test_read_fasta_on_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.fasta"
        path.write_bytes(data)
        _fasta_outcome(path)


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True),
                         st.text(max_size=8), st.sampled_from(["0", "1", "NA", "train", "val", "test", "MKV"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)
FIELD = st.sampled_from(["entry", "Entry", "id", "sequence", "Sequence", "labels", "split"])
LABELS = st.dictionaries(st.sampled_from(["ER", "nucleus", "", "a\nb", "\u00e9"]),
                         st.one_of(st.sampled_from([0, 1, None, "", "1", "x", 2, 0.5, True]), JSON_VALUES), max_size=3)
# Records near the expected shape, with any field missing, mistyped or odd.
RECORD = st.fixed_dictionaries(
    {},
    optional={"entry": st.one_of(st.text(max_size=6), JSON_SCALARS), "sequence": st.one_of(FASTA_TEXT, JSON_SCALARS),
              "labels": st.one_of(LABELS, JSON_VALUES), "split": JSON_SCALARS},
)
DATASET_JSON = st.one_of(JSON_VALUES, st.lists(st.one_of(RECORD, JSON_VALUES), max_size=6),
                         st.dictionaries(FIELD, JSON_VALUES, max_size=3))


def _dataset_outcome(path: Path):
    try:
        dataset = read_dataset(path)
    except UserError as error:
        assert str(error)
        return None
    assert len(dataset.entries) == len(dataset.sequences) == dataset.labels.shape[0] > 0
    assert dataset.labels.shape[1] == len(dataset.label_names) > 0
    return dataset


@FUZZ
@given(DATASET_JSON)
def test_read_dataset_json_returns_a_dataset_or_raises_user_error(payload):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dataset.json"
        path.write_text(json.dumps(payload))
        _dataset_outcome(path)


CELL = st.one_of(st.sampled_from(["", "0", "1", "NA", "MKV", "train", "dev", "x", '"', '""', "a,b", "a\tb", "\r"]),
                 st.text(max_size=5))
HEADER = st.lists(st.sampled_from(["entry", "id", "sequence", "seq", "split", "ER", "nucleus", "", "entry", '"']),
                  max_size=5)


@FUZZ
@given(st.sampled_from([".csv", ".tsv"]), HEADER, st.lists(st.lists(CELL, max_size=6), max_size=5))
def test_read_dataset_tables_return_a_dataset_or_raise_user_error(suffix, header, rows):
    separator = "," if suffix == ".csv" else "\t"
    text = "\n".join(separator.join(row) for row in [header, *rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"dataset{suffix}"
        path.write_text(text)
        _dataset_outcome(path)


@FUZZ
@given(st.sampled_from([".json", ".csv", ".tsv"]), st.binary(max_size=200))
def test_read_dataset_on_arbitrary_bytes(suffix, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"dataset{suffix}"
        path.write_bytes(data)
        _dataset_outcome(path)


def _assert_clean(result, what: str) -> None:
    """Success, or exit 1 with exactly one line, ``Error: ...``, on stderr; never a traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (what, result.exception)
    assert result.exit_code in (0, 1), (what, result.exit_code, result.output)
    if result.exit_code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), (what, result.stderr)


@CLI_FUZZ
@given(FASTA_TEXT, st.sampled_from(["tsv", "jsonl"]))
@example(">a\n\n>b\nMK\n", "tsv")
@example(">huge\n" + "M" * 200_000 + "\n>small\nMKV\n", "tsv")
def test_cli_predict_on_fuzzed_fasta(text, fmt):
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "input.fasta"
        path.write_text(text, encoding="utf-8")
        from_file = runner.invoke(cli, ["predict", str(path), "-m", "bundled", "--format", fmt, "-q",
                                        "--out", str(Path(tmp) / "out")])
        _assert_clean(from_file, text)
        piped = runner.invoke(cli, ["predict", "-", "-m", "bundled", "-q"], input=text)
        _assert_clean(piped, text)
        assert piped.exit_code == from_file.exit_code
        if from_file.exit_code == 1:
            assert piped.stdout == ""  # nothing half-written
            assert not (Path(tmp) / "out").exists()


VALID = [{"entry": f"P{i}", "sequence": "MK" + "ACDEFGHIKL"[i % 10] * (i + 3), "labels": {"ER": i % 2, "nucleus": None}}
         for i in range(20)]


@CLI_FUZZ
@given(DATASET_JSON)
@example(VALID)  # trains
@example(VALID[:2])  # too few proteins for a dev split
@example([{**r, "sequence": r["sequence"] + "\u00e9"} for r in VALID])
def test_cli_train_and_evaluate_on_fuzzed_datasets(payload):
    runner = CliRunner()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dataset.json"
        path.write_text(json.dumps(payload))
        trained = runner.invoke(cli, ["train", "--backbone", "tiny", "--data", str(path), "--epochs", "1",
                                      "--device", "cpu", "--out", str(Path(tmp) / "model"), "-q"])
        _assert_clean(trained, payload)
        evaluated = runner.invoke(cli, ["evaluate", "-m", "bundled", "--data", str(path), "--split", "all", "-q"])
        _assert_clean(evaluated, payload)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe>a\nMK\n", b">a\nMK\n" * 3, b"PK\x03\x04" + bytes(range(256))])
def test_cli_merge_on_bad_parts(tmp_path, content):
    part = tmp_path / "part-1.tsv"
    part.write_bytes(content)
    good = tmp_path / "part-2.tsv"
    good.write_text("id\tlength\nq\t3\n")
    _assert_clean(CliRunner().invoke(cli, ["merge", str(part), str(good)]), content)
