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
    monkeypatch.setattr(console, "_clock", FakeClock(31.0))  # every batch is 31 s later
    result = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("predict: ")]
    # The validation pass counted the records, so the total is known even for a stream.
    assert lines and lines[-1].startswith("predict: 8/8 proteins (100%)"), result.stderr
    assert all(re.match(r"predict: \d/8 proteins", line) for line in lines), result.stderr
    piped = runner.invoke(cli, ["predict", "-", "--device", "cpu"], input=EXAMPLE.read_text())
    assert "predict: 8/8 proteins (100%)" in piped.stderr, piped.stderr
    assert "/0" not in result.stderr
    quiet = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu", "-q"])
    assert "predict: " not in quiet.stderr


# Progress of a long predict or embed run moves with every scored batch, not once a chunk.
CHUNK = 100
PROTEINS = 200
SLOWED = """
import sys, time
import tiny_backbone
original = tiny_backbone.TinyBackbone.tokenize
def slow(self, sequences):
    time.sleep(0.03)
    return original(self, sequences)
tiny_backbone.TinyBackbone.tokenize = slow
import synnav_cli.predict.embed, synnav_cli.predict.run
synnav_cli.predict.run.CHUNK_RECORDS = synnav_cli.predict.embed.CHUNK_RECORDS = {chunk}
from synnav_cli.cli.main import cli
cli(sys.argv[1:], prog_name="synnav")
"""


def _batched_run(tmp_path, command: str) -> list[str]:
    """Arguments for ``command`` (predict or embed) over 200 proteins in chunks of 100, scored
    one or two a batch (a model that keeps 40 residues, 64 tokens a batch)."""
    import launch

    model = launch.tiny_model_dir(tmp_path / "model", max_length=40)
    fasta = launch.write_fasta(tmp_path / "in.fasta", PROTEINS, lengths=(20, 40))
    out = tmp_path / ("out.tsv" if command == "predict" else "out.npz")
    return [command, str(fasta), "--model", str(model), "--device", "cpu", "--max-tokens", "64",
            "-o", str(out)]


def _done(lines: list[str], label: str) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.match(rf"{label}: (\d+)/{PROTEINS} ", line))]


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_a_log_gets_a_line_at_each_tenth_within_a_chunk(command, tmp_path, runner, monkeypatch):
    import synnav_cli.predict.embed
    import synnav_cli.predict.run

    monkeypatch.setattr(synnav_cli.predict.run, "CHUNK_RECORDS", CHUNK)
    monkeypatch.setattr(synnav_cli.predict.embed, "CHUNK_RECORDS", CHUNK)
    monkeypatch.setattr(console, "_clock", FakeClock(1.0))  # a second a batch: a long run
    result = runner.invoke(cli, _batched_run(tmp_path, command))
    assert result.exit_code == 0, result.output
    done = _done(result.stderr.splitlines(), command)
    assert done and done[-1] == PROTEINS, result.stderr
    assert done[0] < CHUNK, result.stderr  # said before the first chunk was written
    tenth = PROTEINS // 10
    steps = [later - earlier for earlier, later in zip([0, *done], done)]
    assert max(steps) <= tenth + 2, result.stderr  # a line at least every 10% (+ one batch)


@pytest.mark.parametrize("command", ["predict", "embed"])
def test_a_terminal_bar_moves_within_a_chunk(command, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    import launch

    env = launch.environment(tmp_path)
    controller, terminal = pty.openpty()
    # 24 rows of 100 columns: tqdm draws nothing on a terminal of no size.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-c", SLOWED.format(chunk=CHUNK), *_batched_run(tmp_path, command)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
    )
    os.close(terminal)
    shown = b""
    while True:
        try:
            data = os.read(controller, 4096)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(controller)
    assert process.wait(timeout=300) == 0, shown.decode(errors="replace")[-3000:]
    text = shown.decode(errors="replace")
    counts = {int(n) for n in re.findall(rf"(\d+)/{PROTEINS}\b", text)}
    assert PROTEINS in counts, text[-2000:]
    # Before it moved batch by batch the bar showed 0, 100 and 200 only.
    assert len(counts - {0, CHUNK, PROTEINS}) >= 3, (sorted(counts), text[-2000:])


def test_a_chunk_of_windows_moves_by_proteins(stderr, monkeypatch):
    """Ten proteins cut into 25 windows: the bar counts proteins, and ends on the chunk's end."""
    monkeypatch.setattr(console, "_clock", FakeClock(10.0))
    progress = console.Progress(10, "predict")
    chunk = progress.chunk(10).over(25)
    seen = []
    for _ in range(4):
        chunk.advance(5)
        seen.append(progress.done)
    chunk.finish()
    assert seen == [2, 4, 6, 8] and progress.done == 10
    chunk.finish()
    assert progress.done == 10
    progress.close()
