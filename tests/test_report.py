"""synnav report: a summary of a predict output in any of its formats, and hostile files refused."""

from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from checks import one_error_line

from synnav_cli.cli.main import cli
from synnav_cli.predict import report as report_module
from synnav_cli.predict.writer import Prediction, PredictionWriter

LABELS = ["cytosol", "ER", "excitatory synapse"]
COLUMNS = ["cytosol", "ER", "excitatory_synapse"]
THRESHOLDS = [0.5, 0.5, 0.5]
ROWS = [
    Prediction("=P1", 300, np.array([0.9, 0.1, 0.6]), "ok"),
    Prediction("P2", 3000, np.array([0.2, 0.7, 0.1]), "windowed:3"),
    Prediction("P3", 2000, np.array([0.1, 0.2, 0.3]), "truncated"),
    Prediction("P4", 9000, None, "skipped"),
    Prediction("P5", 12, None, "short"),
    Prediction("P6", 40, None, "invalid: letter 'J' at 7"),
    Prediction("P7", 80, np.array([0.55, 0.0, 1.0]), "ok"),
]


def _write(path: Path, fmt: str, rows=ROWS, compress: bool = False) -> Path:
    handle = io.StringIO()
    writer = PredictionWriter(handle, fmt, LABELS, THRESHOLDS)
    handle.write(writer.header)
    for row in rows:
        writer.write(row)
    data = handle.getvalue().encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def _report(runner, *args, **kwargs):
    result = runner.invoke(cli, ["report", *args], **kwargs)
    assert result.exit_code == 0, result.output
    return result


def test_every_format_gives_the_same_counts(runner, tmp_path):
    reports = []
    for fmt, compress in (("tsv", False), ("csv", False), ("jsonl", False), ("tsv", True)):
        path = _write(tmp_path / f"out.{fmt}{'.gz' if compress else ''}", fmt, compress=compress)
        reports.append(json.loads(_report(runner, str(path), "--format", "json").stdout))
    assert [r["format"] for r in reports] == ["tsv", "csv", "jsonl", "tsv"]
    for r in reports:
        r.pop("file"), r.pop("format")
    assert all(r == reports[0] for r in reports)
    got = reports[0]
    assert got["records"] == 7 and got["scored"] == 4 and got["not_scored"] == 3
    assert got["status"] == {"ok": 2, "truncated": 1, "windowed": 1, "skipped": 1, "short": 1,
                             "nucleotide": 0, "invalid": 1, "other": 0}
    assert got["no_call"] == 1  # P3: nothing at or over 0.5
    labels = got["labels"]
    assert list(labels) == COLUMNS  # spelled as predict's columns
    assert [labels[c]["called"] for c in COLUMNS] == [2, 1, 2]
    assert [labels[c]["top"] for c in COLUMNS] == [1, 1, 2]  # P1; P2; P3 (0.3, uncalled) and P7
    assert labels["cytosol"]["mean_probability"] == pytest.approx((0.9 + 0.2 + 0.1 + 0.55) / 4, abs=1e-4)
    assert [sum(labels[c]["histogram"]) for c in COLUMNS] == [4, 4, 4]
    assert labels["excitatory_synapse"]["histogram"][-1] == 1  # 1.0 lands in the last bin
    assert labels["ER"]["histogram"][0] == 1  # 0.0 in the first


def test_counts_match_the_rows_a_reader_sees(runner, tmp_path):
    """Cross-check against the table itself: called and no-call counts from its own columns."""
    path = _write(tmp_path / "out.tsv", "tsv")
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    got = json.loads(_report(runner, str(path), "--format", "json").stdout)
    for column in COLUMNS:
        assert got["labels"][column]["called"] == sum(column in r["predicted"].split(";") for r in rows)
    scored = [r for r in rows if r["cytosol"]]
    assert got["no_call"] == sum(not r["predicted"] for r in scored)


def test_text_report_and_figure(runner, tmp_path):
    pytest.importorskip("matplotlib")
    path = _write(tmp_path / "out.jsonl", "jsonl")
    result = _report(runner, str(path), "--plots", str(tmp_path / "figures"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{path} (jsonl): 7 records (ok 2, truncated 1, windowed 1, skipped 1")
    assert "no label called: 1 of 4 scored (25.0%)" in result.stdout
    row = next(line for line in lines if line.startswith("excitatory_synapse"))
    assert row.split() == ["excitatory_synapse", "2", "50.0%", "2", "0.500"]
    figure = tmp_path / "figures" / "probabilities.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "probabilities.png" in result.stderr


def test_standard_input(runner, tmp_path):
    path = _write(tmp_path / "out.tsv", "tsv", compress=True)
    result = _report(runner, "-", "--format", "json", input=path.read_bytes())
    assert json.loads(result.stdout)["records"] == 7


def _tsv(header: list[str], *rows: list[str]) -> bytes:
    return "".join("\t".join(r) + "\n" for r in [header, *rows]).encode()


HEADER = ["id", "length", "cytosol", "ER", "predicted", "status", "top", "top_probability"]


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"),
    (b"hello world\nnot a table\n", "not a synnav predict output"),
    (_tsv(["id", "length", "predicted", "status"]), "0 label columns"),
    (_tsv(HEADER, ["P1", "10", "2", "0.1", "cytosol", "ok", "cytosol", "2"]), "'2' is not a probability"),
    (_tsv(HEADER, ["P1", "10", "nan", "0.1", "", "ok", "", ""]), "'nan' is not a probability"),
    (_tsv(HEADER, ["P1", "10", "0.5"]), "3 cells under 8 columns"),
    (_tsv(HEADER, ["P1", "10", "0.5", "", "", "ok", "", ""]), "some probabilities but not all"),
    (_tsv(["id", "length", "\x1b[31mred", "predicted", "status"]), "is not a label name"),
    (b"\xff\xfe\x00garbage\n", "not UTF-8"),
    (b'{"id": "P1", "probabilities": [0.5]}\n', "line 1: not a synnav predict row"),
    ((b'{"id": "P1", "length": 3, "probabilities": {"a": 0.5}, "predicted": [], "status": "ok"}\n'
     b'{"id": "P2", "length": 3, "probabilities": {"b": 0.5}, "predicted": [], "status": "ok"}\n'),
     "line 2: its labels differ"),
    (gzip.compress(_tsv(HEADER, ["P1", "10", "0.5", "0.1", "", "ok", "", ""]))[:-12], "gzip"),
])
def test_hostile_tables_are_one_line_errors(runner, tmp_path, content, needle):
    path = tmp_path / "table.tsv"
    path.write_bytes(content)
    one_error_line(runner.invoke(cli, ["report", str(path)]), needle)


def test_an_overlong_line_is_refused_without_reading_it_whole(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(report_module, "MAX_LINE", 1000)
    path = tmp_path / "table.tsv"
    path.write_bytes(_tsv(HEADER, ["P1", "10", "0.5", "0.1", "", "ok", "", ""], ["P2" * 600]))
    one_error_line(runner.invoke(cli, ["report", str(path)]), "a line is over 1,000 characters")
    path.write_bytes(b'{"id": "' + b"x" * 2000 + b'"}\n')
    one_error_line(runner.invoke(cli, ["report", str(path)]), "over 1,000 characters")


def test_a_missing_file_is_one_line(runner, tmp_path):
    one_error_line(runner.invoke(cli, ["report", str(tmp_path / "nope.tsv")]))


def test_reading_a_table_loads_no_model_stack(tmp_path):
    """A report of 20,000 rows took 36 s and 245 MB when the writer's imports (numpy, torch)
    came with it; the reader needs neither."""
    import subprocess
    import sys

    path = _write(tmp_path / "out.tsv", "tsv")
    code = (
        "import sys\nfrom synnav_cli.predict.report import summarise\n"
        f"assert summarise({str(path)!r}).records == 7\n"
        "print(sorted({'numpy', 'torch'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
