"""Never lose work: training killed with SIGKILL resumes to the same model; predict --out resumes
and streams in bounded memory.

The training test runs synnav in a subprocess (tests/launch.py) so that it can be killed for
real; the prediction tests interrupt a run in-process with a malformed record, which leaves the
same state a kill would (complete chunks, a progress record), and damage the partial file the
way a kill in the middle of a write would.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import launch
import pytest
from checks import one_error_line
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)

from synnav_cli.cli.main import cli
from synnav_cli.predict import run as predict

RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def _wait_for(path: Path, process: subprocess.Popen, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.01)
    return False


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_model(tmp_path):
    env = launch.environment(tmp_path)
    data = launch.dataset_path(tmp_path)
    # Enough epochs that the kill lands mid-run even on a fast machine (an epoch takes ~0.1 s).
    args = ["train", "--backbone", "tiny", "--data", str(data), "--epochs", "20", "--batch-size", "16",
            "--lr", "3e-3", "--seed", "3", "--device", "cpu", "--max-tokens", "4000", "-q"]
    reference = launch.synnav([*args, "--out", str(tmp_path / "reference")], env, timeout=300)
    assert reference.returncode == 0, reference.stderr

    out = tmp_path / "killed"
    checkpoint = out.with_name("killed.partial") / "checkpoint.json"
    process = subprocess.Popen([sys.executable, "-m", "synnav_cli", *args, "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert _wait_for(checkpoint, process, 240), process.stderr.read().decode() if process.stderr else ""
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not out.exists(), "the run finished before the kill; the test proves nothing"

    restarted = launch.synnav([*args, "--out", str(out)], env, timeout=300)
    assert restarted.returncode == 1 and "--resume" in restarted.stderr  # refuses to start over

    resumed = launch.synnav(["train", "--resume", str(out.with_name("killed.partial")), "--device", "cpu"],
                            env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    expected = json.loads((tmp_path / "reference" / "synnav-model.json").read_text())
    got = json.loads((out / "synnav-model.json").read_text())
    assert got["best_epoch"] == expected["best_epoch"]
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in got["history"]] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in expected["history"]]
    assert got["metrics"] == expected["metrics"]
    assert got["thresholds"] == expected["thresholds"]
    assert not out.with_name("killed.partial").exists()


def _fasta(path: Path, count: int, *, bad_at: int | None = None, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    lines = []
    for i in range(count):
        sequence = "".join(rng.choices(RESIDUES, k=rng.randint(20, 60)))
        lines += [f">p{i}", "12345" if i == bad_at else sequence]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(predict, "CHUNK_RECORDS", 10)


def interrupt_at(monkeypatch, call: int) -> None:
    """The ``call``-th batch scored raises KeyboardInterrupt, as Ctrl-C or a kill would land."""
    original, calls = predict.score_sequences, []

    def scoring(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(predict, "score_sequences", scoring)


@pytest.fixture
def counted(monkeypatch):
    """How many proteins the model scored."""
    seen = []
    original = predict.score_sequences

    def counting(model, backbone, sequences, runtime, *rest, **options):
        seen.extend(sequences)
        return original(model, backbone, sequences, runtime, *rest, **options)

    monkeypatch.setattr(predict, "score_sequences", counting)
    return seen


def test_interrupted_predict_out_resumes_without_redoing_records(runner, tmp_path, small_chunks, counted):
    good = _fasta(tmp_path / "good.fasta", 45)
    whole = runner.invoke(cli, ["predict", str(good), "-m", "bundled", "--out", str(tmp_path / "whole.tsv")])
    assert whole.exit_code == 0, whole.output
    counted.clear()

    out = tmp_path / "out.tsv"
    broken = _fasta(tmp_path / "input.fasta", 45)
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 4)  # chunks of 10: the fourth chunk, records 30-39
        first = runner.invoke(cli, ["predict", str(broken), "-m", "bundled", "--out", str(out)])
    assert first.exit_code == 130 and "Interrupted" in first.output
    assert not out.exists()  # never a half-written result under the final name
    partial = out.with_name("out.tsv.partial")
    state = json.loads(out.with_name("out.tsv.partial.json").read_text())
    assert state["rows"] == 30 and len(partial.read_text().splitlines()) == 31
    assert "run the same command again" in first.output

    # A kill in the middle of a later chunk leaves rows past the checkpoint; they are dropped.
    with partial.open("a") as handle:
        handle.write("p30\t12\t0.5")
    counted.clear()
    second = runner.invoke(cli, ["predict", str(broken), "-m", "bundled", "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert "30 records already done" in second.output
    assert len(counted) == 15  # only the records after the checkpoint were scored
    assert out.read_text() == (tmp_path / "whole.tsv").read_text()
    assert not partial.exists() and not out.with_name("out.tsv.partial.json").exists()


@pytest.mark.parametrize("edit", [{"bytes": 0}, {"bytes": -7}, {"rows": 20}, {"rows": 30, "bytes": -7},
                                  {"output_sha256": None}])
def test_a_progress_record_that_does_not_match_the_partial_file_starts_over(runner, tmp_path, small_chunks, edit):
    """``FILE.partial.json`` is checked against the partial file's rows and bytes before a resume
    trusts it: an offset of 0 or one in the middle of a row, or another row count, would lose the
    header or rows, or tear one. (A negative ``bytes`` here counts back from the true offset.)"""
    fasta = _fasta(tmp_path / "input.fasta", 45)
    whole = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(tmp_path / "whole.tsv")])
    assert whole.exit_code == 0, whole.output
    out = tmp_path / "out.tsv"
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 4)
        assert runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(out)]).exit_code == 130
    state_path = out.with_name("out.tsv.partial.json")
    state = json.loads(state_path.read_text())
    for key, value in edit.items():
        if value is None:
            state.pop(key, None)
        else:
            state[key] = state[key] + value if value < 0 else value
    state_path.write_text(json.dumps(state))
    again = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(out)])
    assert again.exit_code == 0, again.output
    warnings = [line for line in again.stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warnings) == 1 and "from scratch" in warnings[0], again.stderr
    assert "already done" not in again.stderr
    assert out.read_text() == (tmp_path / "whole.tsv").read_text()


@pytest.mark.parametrize("content", ["[" * 200_000, "{", "[]", '{"rows": 1e999, "bytes": 1, "input_sha256": ""}',
                                     '{"rows": "x"}'])
def test_a_damaged_progress_record_starts_over_in_one_line(runner, tmp_path, small_chunks, content):
    fasta = _fasta(tmp_path / "input.fasta", 25)
    out = tmp_path / "out.tsv"
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 3)
        assert runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(out)]).exit_code == 130
    out.with_name("out.tsv.partial.json").write_text(content)
    again = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(out), "-q"])
    assert again.exit_code == 0, again.output
    assert again.stderr.count("\n") == 1 and "unreadable; starting" in again.stderr, again.stderr
    assert len(out.read_text().splitlines()) == 26


@pytest.mark.parametrize("change", ["input", "threshold", "format"])
def test_partial_output_of_another_run_is_refused(runner, tmp_path, small_chunks, change):
    # A name whose suffix names no format, so that --format may change between the runs.
    out = tmp_path / ("out.results" if change == "format" else "out.tsv")
    partial = out.with_name(out.name + ".partial")
    broken = _fasta(tmp_path / "input.fasta", 25)
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 3)
        assert runner.invoke(cli, ["predict", str(broken), "-m", "bundled", "--out", str(out)]).exit_code == 130
    before = partial.read_bytes()
    args = ["predict", str(broken), "-m", "bundled", "--out", str(out), "-q"]
    if change == "input":
        _fasta(broken, 25, seed=1)
    elif change == "threshold":
        args += ["--threshold", "0.3"]
    else:
        args += ["--format", "csv"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and "delete it" in result.output
    assert partial.read_bytes() == before  # kept for the right command
    assert not out.exists()


def test_predict_out_replaces_an_existing_file_only_when_complete(runner, tmp_path, small_chunks):
    out = tmp_path / "out.tsv"
    out.write_text("previous results\n")
    broken = _fasta(tmp_path / "input.fasta", 25)
    with pytest.MonkeyPatch.context() as patch:
        interrupt_at(patch, 3)
        assert runner.invoke(cli, ["predict", str(broken), "-m", "bundled", "--out", str(out)]).exit_code == 130
    assert out.read_text() == "previous results\n"


def test_shards_merge_to_the_unsharded_output(runner, tmp_path, small_chunks):
    fasta = _fasta(tmp_path / "input.fasta", 23)
    for fmt in ("tsv", "jsonl"):
        whole = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--format", fmt, "-q"])
        assert whole.exit_code == 0, whole.output
        parts = [tmp_path / f"part-{i}.{fmt}" for i in range(1, 5)]
        for i, part in enumerate(parts, 1):
            result = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--format", fmt, "-q",
                                         "--shard", f"{i}/4", "--out", str(part)])
            assert result.exit_code == 0, result.output
        merged = runner.invoke(cli, ["merge", *map(str, parts), "--out", str(tmp_path / f"all.{fmt}")])
        assert merged.exit_code == 0, merged.output
        assert (tmp_path / f"all.{fmt}").read_text() == whole.output
        # Shard 1 holds records 1, 5, 9, ...
        rows = parts[0].read_text().splitlines()[(fmt == "tsv"):]
        assert [r.split("\t")[0] if fmt == "tsv" else json.loads(r)["id"] for r in rows] == \
            [f"p{i}" for i in range(0, 23, 4)]

    checked = runner.invoke(cli, ["merge", *map(str, parts), "--fasta", str(fasta)])
    assert checked.exit_code == 0 and checked.output == whole.output
    missing = runner.invoke(cli, ["merge", str(parts[0]), str(parts[2]), str(parts[3])])
    assert missing.exit_code == 1 and missing.output == "Error: shard 2/4 is missing: give all 4 parts\n"
    shuffled = runner.invoke(cli, ["merge", str(parts[3]), str(parts[0]), str(parts[1]), str(parts[2])])
    assert shuffled.exit_code == 1 and "is shard 4/4 but is given as part 1" in shuffled.output
    # Parts without their shard records: 6, 6, 5 rows fit three shards of 17 records, and only the
    # identifiers show that part 2 is gone.
    for part in parts:
        part.with_name(part.name + ".shard.json").unlink()
    missing = runner.invoke(cli, ["merge", str(parts[0]), str(parts[2]), str(parts[3]), "--fasta", str(fasta)])
    assert missing.exit_code == 1 and missing.output.startswith("Error: ") and "'p2'" in missing.output
    shuffled = runner.invoke(cli, ["merge", str(parts[3]), str(parts[0]), str(parts[1]), str(parts[2]),
                                   "--fasta", str(fasta)])
    assert shuffled.exit_code == 1 and "shards 1..N" in shuffled.output


def test_merge_refuses_a_missing_or_duplicated_tsv_part_without_fasta(runner, tmp_path):
    """Parts 1 and 2 of 3 have row counts that fit 2 shards: only the shard each part records
    (``PART.shard.json``) shows that part 3 is missing. The part stays a plain TSV."""
    import csv
    import shutil

    fasta = _fasta(tmp_path / "input.fasta", 23)
    parts = [tmp_path / f"part-{i}.tsv" for i in range(1, 4)]
    for i, part in enumerate(parts, 1):
        result = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "-q", "--shard", f"{i}/3",
                                     "--out", str(part)])
        assert result.exit_code == 0, result.output
        assert json.loads(part.with_name(part.name + ".shard.json").read_text())["shard"] == f"{i}/3"
        rows = list(csv.reader(part.read_text().splitlines(), delimiter="\t"))
        assert rows[0][:2] == ["id", "length"] and len(rows) == 1 + len(range(i - 1, 23, 3))

    def merge(*given):
        return runner.invoke(cli, ["merge", *map(str, given)])

    assert merge(*parts).exit_code == 0
    one_error_line(merge(parts[0], parts[1]), "shard 3/3 is missing")
    one_error_line(merge(parts[0], parts[2]), "shard 2/3 is missing")
    twin = tmp_path / "part-2-again.tsv"
    shutil.copy(parts[1], twin)
    shutil.copy(parts[1].with_name("part-2.tsv.shard.json"), twin.with_name(twin.name + ".shard.json"))
    one_error_line(merge(parts[0], parts[1], twin), str(parts[1]), str(twin), "both shard 2/3")
    one_error_line(merge(parts[1], parts[0], parts[2]), str(parts[1]), "is shard 2/3 but is given as part 1")
    # A part whose rows changed after it was written no longer matches its record.
    parts[2].write_text(parts[2].read_text().rsplit("\n", 2)[0] + "\n")
    one_error_line(merge(*parts), str(parts[2]))
    # A part that records no shard (predict --shard to stdout) is merged only with --fasta.
    bare = tmp_path / "bare-3.tsv"
    bare.write_text(runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "-q", "--shard", "3/3"]).stdout)
    one_error_line(merge(parts[0], parts[1], bare), str(bare), "--fasta")
    checked = merge(parts[0], parts[1], bare, "--fasta", str(fasta))
    assert checked.exit_code == 0, checked.output
    assert len(checked.stdout.splitlines()) == 24


def test_a_damaged_shard_record_is_one_line(runner, tmp_path):
    fasta = _fasta(tmp_path / "input.fasta", 5)
    parts = [tmp_path / f"part-{i}.tsv" for i in (1, 2)]
    for i, part in enumerate(parts, 1):
        result = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "-q", "--shard", f"{i}/2",
                                     "--out", str(part)])
        assert result.exit_code == 0, result.output
    record = parts[1].with_name("part-2.tsv.shard.json")
    genuine = json.loads(record.read_text())
    damaged = ["", "{", "[]", "[" * 100_000, " " * (2 << 20), json.dumps({**genuine, "shard": "2/" + "9" * 5000}),
               json.dumps({**genuine, "shard": "3/2"}), json.dumps({**genuine, "shard": "²/2"}),
               json.dumps({**genuine, "rows": -1}), json.dumps({**genuine, "rows": True}),
               json.dumps({**genuine, "run": None}), json.dumps({k: v for k, v in genuine.items() if k != "sha256"})]
    for content in damaged:
        record.write_text(content)
        one_error_line(runner.invoke(cli, ["merge", *map(str, parts)]), str(record), "not a shard record")
    record.unlink()
    record.symlink_to(parts[0].with_name("part-1.tsv.shard.json"))
    one_error_line(runner.invoke(cli, ["merge", *map(str, parts)]), str(record), "not a shard record")


def test_more_shards_than_records_gives_header_only_parts(runner, tmp_path):
    fasta = _fasta(tmp_path / "input.fasta", 2)
    result = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--shard", "3/3", "-q"])
    assert result.exit_code == 0
    assert result.stdout.startswith("id\tlength") and len(result.stdout.splitlines()) == 1
    assert "shard 3/3 holds no records" in result.stderr


@pytest.mark.parametrize("value", ["0/3", "4/3", "a/b", "3", "1/0", "-1/2", "1/99999999999999999999",
                                   "1/" + "9" * 5000])
def test_bad_shard_is_one_line(runner, tmp_path, value):
    fasta = _fasta(tmp_path / "input.fasta", 2)
    result = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--shard", value, "-q"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: --shard") and result.output.count("\n") == 1


def _rss_kib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_predict_memory_stays_flat_while_the_input_streams_by(runner, tmp_path, monkeypatch):
    """After the first chunks (allocator warm-up) resident memory stops growing, although the
    proteins still to come hold far more text than that: nothing keeps records or rows."""
    # 6,000 proteins of ~2,000 residues: 12 MB of sequence, of which the model scores the first
    # 64 residues (its maximum length), so the test is quick.
    model = launch.tiny_model_dir(tmp_path / "model", max_length=64)
    fasta = launch.write_fasta(tmp_path / "long.fasta", 6000, lengths=(1800, 2200))
    monkeypatch.setattr(predict, "CHUNK_RECORDS", 200)
    samples = []
    original = predict.ResumableOutput.checkpoint

    def sampling(self, rows):
        original(self, rows)
        samples.append(_rss_kib())

    monkeypatch.setattr(predict.ResumableOutput, "checkpoint", sampling)
    result = runner.invoke(cli, ["predict", str(fasta), "-m", str(model), "--device", "cpu", "--max-tokens", "8000",
                                 "--out", str(tmp_path / "out.tsv"), "-q"])
    assert result.exit_code == 0, result.output
    assert len(samples) == 31  # the header, then 30 chunks
    warm, late = statistics.median(samples[6:11]), statistics.median(samples[-5:])
    # Between the two, ~7 MB of sequence went by; holding it (or the rows) would show.
    assert late - warm < 2 * 1024, samples


def test_a_full_disk_is_one_line_and_the_finished_chunks_are_kept(runner, tmp_path, small_chunks, monkeypatch):
    fasta = _fasta(tmp_path / "input.fasta", 35)
    out = tmp_path / "out.tsv"
    original = predict.ResumableOutput.checkpoint

    def disk_fills(self, rows):
        if self.rows >= 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        original(self, rows)

    monkeypatch.setattr(predict.ResumableOutput, "checkpoint", disk_fills)
    full = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(out)])
    errors = [line for line in full.stderr.splitlines() if line.startswith("Error: ")]
    assert full.exit_code == 1 and len(errors) == 1 and "No space left" in errors[0], full.stderr
    assert "20 finished records are kept" in full.stderr and not out.exists()
    monkeypatch.setattr(predict.ResumableOutput, "checkpoint", original)
    again = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(out)])
    assert again.exit_code == 0 and "20 records already done" in again.stderr
    assert len(out.read_text().splitlines()) == 36


def test_out_naming_a_directory_is_one_line(runner, tmp_path):
    fasta = _fasta(tmp_path / "input.fasta", 2)
    result = runner.invoke(cli, ["predict", str(fasta), "-m", "bundled", "--out", str(tmp_path), "-q"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: --out") and "directory" in result.stderr
