"""Progress on stderr: a tqdm bar on a terminal, plain timed lines in logs, nothing with -q."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from synnav_cli import console
from synnav_cli.cli.main import cli

EXAMPLE = Path(__file__).parents[1] / "data" / "example.fasta"


class FakeClock:
    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Captured:
    """stderr as pytest captures it: not a terminal, like a SLURM log."""

    def __init__(self, capsys) -> None:
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def stderr(capsys, monkeypatch):
    monkeypatch.setattr(console, "_level", 1)
    monkeypatch.delenv("RANK", raising=False)
    return Captured(capsys)


def run(total, steps, count, clock_step, monkeypatch, suffix=""):
    monkeypatch.setattr(console, "_clock", FakeClock(clock_step))
    progress = console.Progress(total, "predict")
    for _ in range(steps):
        progress.advance(count, suffix)
    progress.close()


def test_log_lines_at_each_tenth_with_rate_and_eta(stderr, monkeypatch):
    run(1000, 100, 10, 1.0, monkeypatch)  # 100 s in all: 10% steps come before 30 s pass
    lines = stderr.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("predict: 100/1000 proteins (10%), ")
    assert re.search(r", \d+\.\d/s, ETA 1m30s, 10s elapsed$", lines[0])
    assert lines[-1].startswith("predict: 1000/1000 proteins (100%), ") and "ETA" not in lines[-1]


def test_log_lines_every_30_seconds_between_tenths(stderr, monkeypatch):
    run(100_000, 300, 1, 10.0, monkeypatch, suffix="loss 0.5")  # 3000 s, 0.3% done
    lines = stderr.getvalue().splitlines()
    assert 95 <= len(lines) <= 102  # one every 30 s, plus the last word at close
    assert all(line.endswith(", loss 0.5") for line in lines[:-1])
    assert "ETA" in lines[0] and "h" in lines[0].split("ETA")[1]


def test_unknown_total_says_done_and_rate_only(stderr, monkeypatch):
    run(None, 5, 1000, 31.0, monkeypatch)
    text = stderr.getvalue()
    lines = text.splitlines()
    assert lines[0].startswith("predict: 1000 proteins, ")
    assert lines[-1].startswith("predict: 5000 proteins, ")
    assert "/0" not in text and "ETA" not in text and "-" not in text
    run(0, 5, 1000, 31.0, monkeypatch)  # 0, as older callers said, is unknown too
    text = stderr.getvalue()
    assert text and "/0" not in text


def test_quick_runs_leave_the_log_alone(stderr, monkeypatch):
    run(None, 3, 10, 0.1, monkeypatch)
    run(100, 10, 10, 0.4, monkeypatch)  # all ten steps within the first 5 s
    assert stderr.getvalue() == ""


def test_quiet_and_other_ranks_say_nothing(stderr, monkeypatch):
    monkeypatch.setattr(console, "_level", 0)
    run(100, 10, 10, 40.0, monkeypatch)
    monkeypatch.setattr(console, "_level", 1)
    monkeypatch.setenv("RANK", "1")
    run(100, 10, 10, 40.0, monkeypatch)
    assert stderr.getvalue() == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("total, shown", [(500, "500/500"), (None, "500protein")])
def test_terminal_gets_a_tqdm_bar(monkeypatch, total, shown):
    terminal = Terminal()
    monkeypatch.setattr(console.sys, "stderr", terminal)
    monkeypatch.setattr(console, "_level", 1)
    monkeypatch.delenv("RANK", raising=False)
    progress = console.Progress(total, "predict")
    assert progress.mode == "bar"
    for _ in range(5):
        progress.advance(100)
    progress.close()
    text = terminal.getvalue()
    assert "predict" in text and shown in text.replace(" ", "")
    assert "/0" not in text


def test_predict_in_a_log_writes_progress_lines(runner, monkeypatch):
    monkeypatch.setattr(console, "_clock", FakeClock(31.0))  # every chunk is 31 s later
    result = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("predict: ")]
    # The validation pass counted the records, so the total is known even for a stream.
    assert lines and lines[0].startswith("predict: 8/8 proteins (100%)"), result.stderr
    piped = runner.invoke(cli, ["predict", "-", "--device", "cpu"], input=EXAMPLE.read_text())
    assert "predict: 8/8 proteins (100%)" in piped.stderr, piped.stderr
    assert "/0" not in result.stderr
    quiet = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu", "-q"])
    assert "predict: " not in quiet.stderr
