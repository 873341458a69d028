"""Adversarial inputs and concurrent runs: no code from data files, no deleted user data, one
writer per output, step-granular stops, one-line errors for damaged files (docs/safety.md).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import launch
import pytest
import torch
from checks import one_error_line
from hub_fixture import cache_repo
from launch import normal_verbosity  # noqa: F401  (an autouse fixture)
import safetensors.torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from synnav_cli import files, modeldir
from synnav_cli.cli.main import cli
from synnav_cli.domain.assess import DOMAIN_COLUMNS
from synnav_cli.errors import UserError
from synnav_cli.train import checkpoint
from synnav_cli.train import loop as training

TRAIN = ["train", "--backbone", "tiny", "--epochs", "3", "--batch-size", "8", "--lr", "3e-3",
         "--seed", "1", "--device", "cpu", "--max-tokens", "2000", "-q"]
SRC = Path(training.__file__).parents[1]


def train_args(data: Path, out: Path) -> list[str]:
    return [*TRAIN, "--data", str(data), "--out", str(out)]


def stop_at(monkeypatch, epoch: int, step: int) -> None:
    """Send this process SIGTERM during ``step`` of ``epoch`` of training (both 1-based)."""
    original_batches, original_accumulate = training.batches.training_batches, training.accumulate
    count = {"per_epoch": None, "steps": 0}

    def training_batches(lengths, max_tokens, batch_size, rng):
        batches = original_batches(lengths, max_tokens, batch_size, rng)
        count["per_epoch"] = count["per_epoch"] or len(batches)
        return batches

    def accumulate(backward, lengths, optimizer, runtime, *rest):
        loss = original_accumulate(backward, lengths, optimizer, runtime, *rest)
        count["steps"] += 1
        if count["steps"] == (epoch - 1) * count["per_epoch"] + step:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(training.batches, "training_batches", training_batches)
    monkeypatch.setattr(training, "accumulate", accumulate)


def comparable(model_dir: Path) -> dict:
    meta = json.loads((model_dir / "synnav-model.json").read_text())
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in meta["history"]]
    return {"history": history, "metrics": meta["metrics"], "thresholds": meta["thresholds"],
            "best_epoch": meta["best_epoch"]}


@pytest.fixture
def small_dataset(tmp_path) -> Path:
    """A private copy: a resume must see the very file its run started with."""
    copy = tmp_path / "small.json"
    copy.write_bytes((launch.TESTS / "data" / "small.json").read_bytes())
    return copy


@pytest.fixture
def interrupted(runner, tmp_path, small_dataset, monkeypatch) -> Path:
    """A training workspace stopped by SIGTERM at step 2 of epoch 2; returns ``<out>``."""
    out = tmp_path / "model"
    stop_at(monkeypatch, 2, 2)
    result = runner.invoke(cli, train_args(small_dataset, out))
    monkeypatch.undo()
    one_error_line(result, "stopped at step 2 of epoch 2", "--resume")
    assert checkpoint.exists(out.with_name("model.partial")) and not out.exists()
    return out


# 1. No code runs from a checkpoint ------------------------------------------------------------


def test_no_source_file_unpickles():
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "import pickle" not in text and "pickle.load" not in text, path


class Exploit:
    marker: Path

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_a_crafted_pickle_in_a_workspace_never_runs(runner, interrupted, tmp_path):
    workspace = interrupted.with_name("model.partial")
    marker = tmp_path / "marker"
    exploit = Exploit()
    exploit.marker = marker
    payload = pickle.dumps({"model": exploit})
    # Every file a resume reads, and the old checkpoint name, replaced by the pickle.
    (workspace / "checkpoint.pt").write_bytes(payload)
    for tensors in workspace.glob("checkpoint-*.safetensors"):
        tensors.write_bytes(payload)
    result = runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu"])
    one_error_line(result, "damaged")
    assert not marker.exists()
    # With the recorded hash made to match, the pickle reaches the tensor reader itself.
    state = json.loads((workspace / "checkpoint.json").read_text())
    state["tensors_sha256"] = hashlib.sha256(payload).hexdigest()
    (workspace / "checkpoint.json").write_text(json.dumps(state))
    one_error_line(runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu"]), "damaged")
    assert not marker.exists()


def test_checkpoint_round_trips_nested_state(tmp_path):
    state = {"a": torch.arange(3.0), "opt": {"state": {0: {"step": torch.tensor(4.0)}},
                                             "param_groups": [{"betas": (0.9, 0.99), "params": [0]}]},
             "big": 2**100, "none": None, "inf": -1.5}
    checkpoint.save(tmp_path, state)
    got = checkpoint.load(tmp_path)
    assert torch.equal(got["a"], state["a"]) and got["big"] == 2**100
    assert got["opt"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert torch.equal(got["opt"]["state"][0]["step"], torch.tensor(4.0))


def test_checkpoint_names_only_files_in_its_own_directory(tmp_path):
    checkpoint.save(tmp_path, {"x": torch.zeros(2)})
    record = json.loads((tmp_path / "checkpoint.json").read_text())
    record["tensors"] = "../../etc/passwd"
    (tmp_path / "checkpoint.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="damaged"):
        checkpoint.load(tmp_path)


# 2. A resume writes only to its own location, with the data it started with ---------------------


def test_an_edited_run_json_cannot_redirect_the_model(runner, interrupted, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    workspace = interrupted.with_name("model.partial")
    run = json.loads((workspace / "run.json").read_text())
    run.update({"out": str(victim), "force": True})
    (workspace / "run.json").write_text(json.dumps(run))
    result = runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert (victim / "thesis.tex").read_text() == "years of work"
    assert modeldir.is_model_dir(interrupted) and not workspace.exists()


def test_a_changed_dataset_is_refused_on_resume(runner, interrupted, tmp_path):
    workspace = interrupted.with_name("model.partial")
    run = json.loads((workspace / "run.json").read_text())
    records = json.loads(Path(run["data"]).read_text())
    record = next(r for r in records if any(v is not None for v in r["labels"].values()))
    record["labels"] = {k: (None if v is None else 1 - v) for k, v in record["labels"].items()}
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(records))
    run["data"] = str(changed)
    (workspace / "run.json").write_text(json.dumps(run))
    one_error_line(runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu"]),
                   "has changed since this run started")


def test_an_edited_config_is_refused_on_resume(runner, interrupted):
    workspace = interrupted.with_name("model.partial")
    run = json.loads((workspace / "run.json").read_text())
    run["config"]["learning_rate"] = 0.5
    (workspace / "run.json").write_text(json.dumps(run))
    one_error_line(runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu"]),
                   "another configuration")


@pytest.mark.parametrize("content", ["[]", "{", '{"config": {"epochs": "abc"}}', '[[[[' * 5000])
def test_a_broken_run_json_is_one_line(runner, interrupted, content):
    workspace = interrupted.with_name("model.partial")
    (workspace / "run.json").write_text(content)
    one_error_line(runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu"]), "run.json")


def test_a_truncated_checkpoint_is_one_line(runner, interrupted):
    workspace = interrupted.with_name("model.partial")
    tensors = next(workspace.glob("checkpoint-*.safetensors"))
    tensors.write_bytes(tensors.read_bytes()[:100])
    one_error_line(runner.invoke(cli, ["train", "--resume", str(workspace), "--device", "cpu"]), "truncated")


# 3. One writer per output -----------------------------------------------------------------------


SLOW_PREDICT = launch.slowed_cli("synnav_cli.predict.run", "score_sequences", 20, 0.3)


def test_a_second_predict_on_the_same_out_is_refused_while_the_first_finishes(runner, tmp_path):
    env = launch.environment(tmp_path)
    model = launch.tiny_model_dir(tmp_path / "m")
    fasta = launch.write_fasta(tmp_path / "in.fasta", 300, lengths=(20, 60))
    out = tmp_path / "out.tsv"
    args = ["predict", str(fasta), "--model", str(model), "--out", str(out), "--device", "cpu", "-q"]
    first = subprocess.Popen([sys.executable, "-c", SLOW_PREDICT, *args], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        lock = out.with_name("out.tsv.lock")
        deadline = time.monotonic() + 120
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.exists(), first.stderr.read() if first.poll() is not None else "no lock"
        one_error_line(runner.invoke(cli, args), "another synnav run is writing", str(out))
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    alone = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--device", "cpu"])
    assert out.read_text() == alone.stdout
    assert not out.with_name("out.tsv.lock").exists()


def test_a_second_train_on_the_same_out_is_refused_while_the_first_finishes(runner, tmp_path, small_dataset):
    env = launch.environment(tmp_path)
    out = tmp_path / "model"
    args = [*TRAIN, "--epochs", "40", "--data", str(small_dataset), "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-m", "synnav_cli", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lock = out.with_name("model.partial") / "lock"
        deadline = time.monotonic() + 120
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert lock.exists(), "the first run never held its workspace"
        second = runner.invoke(cli, args)
        one_error_line(second, "another synnav run is writing")
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    meta = json.loads((out / "synnav-model.json").read_text())
    assert meta["config"]["epochs"] == 40 and len(meta["history"]) == 40
    assert set(load_file(str(out / "model.safetensors")))  # whole and readable


def test_a_link_planted_at_the_workspace_is_refused_and_the_target_untouched(runner, tmp_path, small_dataset):
    victim = tmp_path / "victim"
    victim.mkdir()
    mine = {"best.safetensors": b"my weights", "lock": b"my lock", "run.json": b"{}"}
    for name, content in mine.items():
        (victim / name).write_bytes(content)
    out = tmp_path / "lnm"
    out.with_name("lnm.partial").symlink_to(victim, target_is_directory=True)
    for args in (train_args(small_dataset, out), ["train", "--resume", str(out), "--device", "cpu"],
                 ["train", "--resume", str(out.with_name("lnm.partial")), "--device", "cpu"]):
        one_error_line(runner.invoke(cli, args), "lnm.partial is a symbolic link")
        assert {p.name: p.read_bytes() for p in victim.iterdir()} == mine
    assert not out.exists() and out.with_name("lnm.partial").is_symlink()


def test_a_lock_is_exclusive_and_removed_on_release(tmp_path):
    lock = tmp_path / "x.lock"
    with files.exclusive_lock(lock, "x"):
        with pytest.raises(UserError, match="another synnav run"), files.exclusive_lock(lock, "x"):
            pass
    assert not lock.exists()
    with files.exclusive_lock(lock, "x"):  # free again
        assert lock.exists()


# 4. cache clear deletes only what it lists ------------------------------------------------------


def test_cache_clear_through_a_symlinked_root_deletes_only_listed_repositories(runner, tmp_path, monkeypatch):
    target = tmp_path / "elsewhere"
    hub = target / "hub"
    cache_repo(hub, "org/weights", {"model.safetensors": b"w" * 100})
    (hub / "datasets--org--data").mkdir(parents=True)
    (hub / "datasets--org--data" / "keep").write_text("dataset")
    (hub / "my-notes").mkdir()
    (hub / "my-notes" / "keep.txt").write_text("notes")
    outside = tmp_path / "victim"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    (hub / "models--org--linked").symlink_to(outside, target_is_directory=True)
    link = tmp_path / "cache-link"
    link.symlink_to(target, target_is_directory=True)
    monkeypatch.setenv("SYNNAV_CACHE_DIR", str(link))
    result = runner.invoke(cli, ["cache", "clear", "--yes"])
    assert result.exit_code == 0, result.output
    assert not (hub / "models--org--weights").exists()
    assert (hub / "datasets--org--data" / "keep").read_text() == "dataset"
    assert (hub / "my-notes" / "keep.txt").read_text() == "notes"
    assert (outside / "keep").read_text() == "precious"
    assert link.is_symlink() and hub.is_dir()


# 5. --out must be a new name or a regular file, never the input ---------------------------------


@pytest.fixture
def model_and_fasta(tmp_path):
    return launch.tiny_model_dir(tmp_path / "m"), launch.write_fasta(tmp_path / "in.fasta", 5)


def test_out_naming_the_input_is_refused(runner, model_and_fasta):
    model, fasta = model_and_fasta
    before = fasta.read_text()
    one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--out", str(fasta)]),
                   "is the input file")
    assert fasta.read_text() == before


@pytest.mark.parametrize("command, name", [(["predict"], "in.fasta"), (["predict", "--compare"], "in.fasta"),
                                           (["predict", "--explain", "{tmp}/why"], "in.fasta"),
                                           (["embed", "-b", "tiny"], "in.npz")])
def test_out_naming_the_file_on_standard_input_is_refused(tmp_path, command, name):
    # `synnav predict - --out in.fasta < in.fasta`: the shell opened the input, synnav sees only "-".
    model = launch.tiny_model_dir(tmp_path / "m")
    fasta = tmp_path / name
    fasta.write_text(">P1\nMKVLAAGIVLLLSAAQ\n>P1_mut_K2R\nMRVLAAGIVLLLSAAQ\n")
    before = fasta.read_bytes()
    command = [c.format(tmp=tmp_path) for c in command]
    args = [command[0], "-", *command[1:], "--out", str(fasta), "--device", "cpu"]
    if command[0] == "predict":
        args += ["--model", str(model)]
    with fasta.open("rb") as stdin:
        result = launch.synnav(args, launch.environment(tmp_path), stdin=stdin)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("Error: ") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "is the input file" in result.stderr and "standard input" in result.stderr, result.stderr
    assert fasta.read_bytes() == before


def test_out_naming_a_fifo_or_a_device_is_refused(runner, model_and_fasta, tmp_path):
    model, fasta = model_and_fasta
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (fifo, Path("/dev/null")):
        one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--out", str(target)]),
                       "not a regular file")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_link_planted_at_the_partial_name_is_not_followed(runner, model_and_fasta, tmp_path):
    model, fasta = model_and_fasta
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's")
    out = tmp_path / "out.tsv"
    out.with_name("out.tsv.partial").symlink_to(victim)
    one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--out", str(out)]),
                   "symbolic link")
    assert victim.read_text() == "someone else's"


def test_merge_out_naming_a_part_is_refused(runner, tmp_path):
    part = tmp_path / "part.tsv"
    part.write_text("id\tx\na\t1\n")
    one_error_line(runner.invoke(cli, ["merge", str(part), "--out", str(part)]), "is the input file")
    assert part.read_text() == "id\tx\na\t1\n"


# 6. --force replaces only model directories ----------------------------------------------------


def test_force_does_not_replace_a_folder_that_is_not_a_model(runner, tmp_path, small_dataset):
    source = tmp_path / "src"
    source.mkdir()
    (source / "main.py").write_text("print('mine')")
    one_error_line(runner.invoke(cli, [*train_args(small_dataset, source), "--force"]),
                   "not a synnav model directory")
    assert (source / "main.py").read_text() == "print('mine')"
    assert not source.with_name("src.partial").exists() or not any(source.with_name("src.partial").iterdir())


@pytest.mark.parametrize("metadata", ["{}", "[]", '{"backbone": "tiny"}', "not json"])
def test_force_does_not_replace_a_folder_whose_metadata_predict_would_refuse(runner, tmp_path, small_dataset,
                                                                             metadata):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "synnav-model.json").write_text(metadata)
    (folder / "thesis.tex").write_text("years of work")
    one_error_line(runner.invoke(cli, [*train_args(small_dataset, folder), "--force"]),
                   "not a synnav model directory")
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_force_replaces_a_model_directory(runner, tmp_path, small_dataset):
    out = launch.tiny_model_dir(tmp_path / "model")
    result = runner.invoke(cli, [*train_args(small_dataset, out), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "synnav-model.json").read_text())["config"]["epochs"] == 3


# 7. A stop signal ends training at the next step, and the resume is exact ---------------------


def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(runner, interrupted, tmp_path, small_dataset):
    saved = checkpoint.load(interrupted.with_name("model.partial"))
    assert (saved["epoch"], saved["step"]) == (1, 2)  # one epoch done, two steps into the second
    resumed = runner.invoke(cli, ["train", "--resume", str(interrupted.with_name("model.partial")),
                                  "--device", "cpu", "-q"])
    assert resumed.exit_code == 0, resumed.output
    reference = tmp_path / "reference"
    assert runner.invoke(cli, train_args(small_dataset, reference)).exit_code == 0
    assert comparable(interrupted) == comparable(reference)
    ours, theirs = load_file(str(interrupted / "model.safetensors")), load_file(str(reference / "model.safetensors"))
    assert [k for k in theirs if not torch.equal(ours[k], theirs[k])] == []


@pytest.mark.slow
def test_a_real_sigterm_stops_within_a_step_and_resumes_exactly(tmp_path, small_dataset):
    env = launch.environment(tmp_path)
    args = [*TRAIN, "--epochs", "30", "--data", str(small_dataset)]
    reference = launch.synnav([*args, "--out", str(tmp_path / "reference")], env)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "stopped"
    process = subprocess.Popen([sys.executable, "-m", "synnav_cli", *args, "--out", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        state = out.with_name("stopped.partial") / "checkpoint.json"
        deadline = time.monotonic() + 120
        while not state.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        stopped_after = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1 and "--resume" in stderr, stderr
    assert stopped_after < 5, f"took {stopped_after:.1f}s to stop"
    resumed = launch.synnav(["train", "--resume", str(out.with_name("stopped.partial")), "--device", "cpu"], env)
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(out) == comparable(tmp_path / "reference")


# 8. Damaged files are one line -----------------------------------------------------------------


@pytest.mark.parametrize("content", [
    "[]", "[[[[" * 10000, "{}", '{"backbone": "tiny", "labels": ["a"], "thresholds": {"a": 0.5}, '
    '"config": {"max_length": "abc"}}', '{"backbone": "tiny", "labels": ["a"], "thresholds": {}}',
    '{"backbone": "tiny", "labels": ["a"], "thresholds": {"a": 0.5}, "config": {"max_length": -5}}',
    # What `models show` and `models list` read: a list, or numbers where text goes, was a traceback.
    '{"backbone": "tiny", "labels": ["a"], "thresholds": {"a": 0.5}, "metrics": [1, 2]}',
    '{"backbone": "tiny", "labels": ["a"], "thresholds": {"a": 0.5}, "metrics": {"test": {"labels": {"a": []}}}}',
    '{"backbone": "tiny", "labels": ["a"], "thresholds": {"a": 0.5}, "data": {"path": 5}}',
    '{"backbone": "tiny", "labels": ["a"], "thresholds": {"a": 0.5}, "created": 5, "versions": []}',
])
def test_malformed_model_metadata_is_one_line_and_does_not_hide_other_models(runner, tmp_path, content):
    models = Path(os.environ["SYNNAV_DATA_DIR"]) / "models"
    good = launch.tiny_model_dir(models / "good")
    broken = launch.tiny_model_dir(models / "broken")
    (broken / "synnav-model.json").write_text(content)
    os.utime(broken / "synnav-model.json")
    one_error_line(runner.invoke(cli, ["models", "show", str(broken)]), "damaged")
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3)
    one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(broken)]), "damaged")
    listing = runner.invoke(cli, ["models", "list"])
    assert listing.exit_code == 0 and "good" in listing.stdout, listing.output
    default = runner.invoke(cli, ["predict", str(fasta)])
    assert default.exit_code == 0 and default.stdout.count("\n") == 4, default.output
    assert good.exists()


def test_a_model_of_a_newer_format_is_refused_naming_the_format_read(runner, tmp_path):
    models = Path(os.environ["SYNNAV_DATA_DIR"]) / "models"
    launch.tiny_model_dir(models / "good")
    newer = launch.tiny_model_dir(models / "newer")
    meta = json.loads((newer / "synnav-model.json").read_text())
    (newer / "synnav-model.json").write_text(json.dumps({**meta, "format_version": 999}))
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3)
    for args in (["predict", str(fasta), "--model", str(newer)], ["models", "show", str(newer)]):
        one_error_line(runner.invoke(cli, args), "format 999", "format 1", "newer synnav")
    listing = runner.invoke(cli, ["models", "list"])
    assert listing.exit_code == 0 and "good" in listing.stdout and "format 999" in listing.stderr, listing.output
    (newer / "synnav-model.json").write_text(json.dumps({**meta, "format_version": "2"}))
    one_error_line(runner.invoke(cli, ["models", "show", str(newer)]), "damaged", "format_version")


@pytest.mark.parametrize("label", ["\x1b[2Jcytosol", "ER\tlumen", "nucleus\x9b31m", "mito\u202echondrion",
                                   "a\nb"])
def test_control_characters_in_label_names_are_refused_when_loading(runner, tmp_path, label):
    model = launch.tiny_model_dir(tmp_path / "m", labels=["cytosol", label])
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3)
    for args in (["predict", str(fasta), "--model", str(model)], ["models", "show", str(model)],
                 ["embed", str(fasta), "--model", str(model), "-o", str(tmp_path / "e.npz")]):
        result = runner.invoke(cli, args)
        one_error_line(result, "damaged", "control characters")
        assert label not in result.output and "\x1b" not in result.output and "\x9b" not in result.output


def test_nan_weights_are_refused_when_loading(runner, tmp_path):
    model = launch.tiny_model_dir(tmp_path / "m")
    tensors = load_file(str(model / "model.safetensors"))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(model / "model.safetensors"))
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3)
    one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(model)]), "NaN")


@pytest.mark.parametrize("dtype", [torch.int32, torch.float16, torch.bool])
def test_weights_of_another_dtype_are_refused_when_loading(runner, tmp_path, dtype):
    # load_state_dict copies an int32 tensor into a float parameter without a word: every
    # protein then scored 0.5000, status ok.
    model = launch.tiny_model_dir(tmp_path / "m")
    tensors = {k: v.to(dtype) for k, v in load_file(str(model / "model.safetensors")).items()}
    save_file(tensors, str(model / "model.safetensors"))
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3)
    line = one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(model)]), "damaged",
                          str(dtype).removeprefix("torch."), "float32")
    assert len(line) < 400


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    # What safetensors raises: not an OSError.
    SafetensorError('Error while serializing: I/O error: No space left on device (os error 28) at path "x"'),
])
def test_a_full_disk_during_training_is_one_line_and_leaves_no_temporary_file(runner, tmp_path, small_dataset,
                                                                               monkeypatch, error):
    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "model"
    one_error_line(runner.invoke(cli, train_args(small_dataset, out)), "No space left on device")
    # A run that fails at its first checkpoint removes the workspace it made; none of its files stay.
    leftovers = [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name or "-new" in p.name]
    assert leftovers == []


@pytest.mark.parametrize("args", [["predict", "{fasta}", "-m", "bundled", "--device", "cpu"], ["models", "list"]])
def test_a_closed_standard_output_is_one_line(tmp_path, args):
    # `synnav predict x.fa >&-`: Python then has no sys.stdout, and the first row was a traceback.
    fasta = launch.write_fasta(tmp_path / "in.fasta", 3)
    command = [sys.executable, "-m", "synnav_cli", *(a.format(fasta=fasta) for a in args)]
    result = launch.run(["bash", "-c", '"$@" >&-', "bash", *command], launch.environment(tmp_path))
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "standard output is closed" in errors[0], result.stderr
    assert "Traceback" not in result.stderr, result.stderr


def test_a_deeply_nested_dataset_is_one_line(runner, tmp_path):
    data = tmp_path / "deep.json"
    data.write_text("[" * 100000 + "]" * 100000)
    one_error_line(runner.invoke(cli, [*train_args(data, tmp_path / "m")]), "nested too deeply")


# 10. Headers: bounded in messages, no control characters, a BOM is fine -------------------------


def test_a_huge_header_is_not_quoted_whole(runner, model_and_fasta, tmp_path):
    model, _ = model_and_fasta
    fasta = tmp_path / "huge.fasta"
    fasta.write_text(">" + "A" * 5_000_000 + "\nNOT A PROTEIN 123\n")
    line = one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(model)]), "characters")
    assert len(line) < 400


@pytest.mark.parametrize("name", ["a" * 100_000, "x/" * 50_000, "\x1b[31m" * 10_000])
def test_a_huge_model_name_is_not_quoted_whole(runner, model_and_fasta, tmp_path, name):
    _, fasta = model_and_fasta
    for args in (["predict", str(fasta), "--model", name], ["embed", str(fasta), "--model", name, "-o",
                 str(tmp_path / "e.npz")], ["models", "show", name], ["models", "default", name]):
        line = one_error_line(runner.invoke(cli, args), "characters")
        assert len(line) < 400 and "\x1b" not in line, line[:400]


def test_a_nul_in_a_header_is_refused(runner, model_and_fasta, tmp_path):
    model, _ = model_and_fasta
    fasta = tmp_path / "nul.fasta"
    fasta.write_bytes(b">p1\x00evil\nMKV\n")
    result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    one_error_line(result, "control characters")
    assert "\x00" not in result.output


@pytest.mark.parametrize("char", ["\x85", "\x9b", "\u2028", "\u2029", "\u202e"])
def test_c1_controls_and_line_or_bidi_separators_in_a_header_are_refused(runner, model_and_fasta, tmp_path, char):
    # str.splitlines() breaks a row at U+0085, U+2028 and U+2029; U+009B starts a terminal escape
    # sequence; U+202E reverses what a terminal or a spreadsheet shows.
    model, _ = model_and_fasta
    fasta = tmp_path / "c1.fasta"
    fasta.write_text(f">p1{char}evil\nMKVLAAGIV\n>p2\nMKV\n", encoding="utf-8")
    for args in (["predict", str(fasta), "--model", str(model)],
                 ["embed", str(fasta), "-b", "tiny", "-o", str(tmp_path / "e.npz")]):
        result = runner.invoke(cli, args)
        one_error_line(result, "control characters")
        assert char not in result.output
    kept = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--skip-invalid"])
    assert kept.exit_code == 0 and char not in kept.stdout and len(kept.stdout.splitlines()) == 3, kept.output


def test_a_byte_order_mark_is_accepted(runner, model_and_fasta, tmp_path, small_dataset):
    model, fasta = model_and_fasta
    marked = tmp_path / "bom.fasta"
    marked.write_bytes(b"\xef\xbb\xbf" + fasta.read_bytes())
    plain = runner.invoke(cli, ["predict", str(fasta), "--model", str(model)])
    with_bom = runner.invoke(cli, ["predict", str(marked), "--model", str(model)])
    assert with_bom.exit_code == 0 and with_bom.stdout == plain.stdout, with_bom.output
    piped = runner.invoke(cli, ["predict", "-", "--model", str(model)], input=marked.read_bytes())
    assert piped.exit_code == 0 and piped.stdout == plain.stdout, piped.output
    from synnav_cli.data.dataset import read_dataset

    records = json.loads(small_dataset.read_text())[:5]
    table = tmp_path / "bom.csv"
    names = list(records[0]["labels"])
    rows = ["entry,sequence," + ",".join(names)] + [
        f"{r['entry']},{r['sequence']}," + ",".join("" if r["labels"][n] is None else str(r["labels"][n])
                                                   for n in names) for r in records]
    table.write_bytes(b"\xef\xbb\xbf" + "\n".join(rows).encode())
    assert read_dataset(table).entries == [r["entry"] for r in records]


# 11. Files follow the umask --------------------------------------------------------------------


@pytest.mark.parametrize("umask, directory, file", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_model_directories_and_outputs_follow_the_umask(runner, tmp_path, umask, directory, file):
    previous = os.umask(umask)
    files._umask.cache_clear()
    try:
        model = launch.tiny_model_dir(tmp_path / "m")
        fasta = launch.write_fasta(tmp_path / "in.fasta", 3)
        out = tmp_path / "out.tsv"
        assert runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--out", str(out)]).exit_code == 0
    finally:
        os.umask(previous)
        files._umask.cache_clear()
    assert stat.S_IMODE(model.stat().st_mode) == directory
    assert stat.S_IMODE((model / "model.safetensors").stat().st_mode) == file
    assert stat.S_IMODE((model / "synnav-model.json").stat().st_mode) == file
    assert stat.S_IMODE(out.stat().st_mode) == file


def test_out_over_a_private_file_keeps_it_private(runner, tmp_path):
    previous = os.umask(0o022)
    files._umask.cache_clear()
    try:
        model = launch.tiny_model_dir(tmp_path / "m")
        fasta = tmp_path / "in.fasta"
        fasta.write_text(">P1\nMKVLAAGIVLLLSAAQ\n>P1_mut_K2R\nMRVLAAGIVLLLSAAQ\n")
        part = tmp_path / "part.tsv"
        part.write_text("id\tx\nP1\t1\nP1_mut_K2R\t1\n")
        modes = {}
        for name, args in (("p.tsv", ["predict", str(fasta), "--model", str(model)]),
                           ("c.tsv", ["predict", str(fasta), "--compare", "--model", str(model)]),
                           ("e.npz", ["embed", str(fasta), "-b", "tiny"]),
                           ("m.tsv", ["merge", str(part), "--fasta", str(fasta)])):
            out = tmp_path / name
            out.write_text("private")
            out.chmod(0o600)
            result = runner.invoke(cli, [*args, "--out", str(out)])
            assert result.exit_code == 0, result.output
            assert out.read_bytes() != b"private", name
            modes[name] = stat.S_IMODE(out.stat().st_mode)
        assert modes == dict.fromkeys(modes, 0o600)
    finally:
        os.umask(previous)
        files._umask.cache_clear()


# 12. Spreadsheets never run a cell ----------------------------------------------------------------

FORMULAS = ["=1+1", "+SUM(1,2)", "-2+3", "@SUM(1)", '=HYPERLINK("http://example.com/x","open")', "'quoted"]


def test_formula_ids_and_labels_are_text_in_csv_and_tsv(runner, tmp_path):
    """OWASP's CSV-injection advice: a text cell starting with = + - @ (or ') gets a leading ',
    always in csv, in tsv unless --raw-ids; jsonl is verbatim. Dropping one leading ' gives the id
    back, for pandas or R."""
    import csv

    model = launch.tiny_model_dir(tmp_path / "m", labels=["=cmd|' /C calc'!A0", "nucleus"])
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">{name}\nMKVLAAGIVLLLSAAQGHWEDKRPTSNC\n" for name in [*FORMULAS, "P12345"]))
    neutral = [f"'{name}" for name in FORMULAS] + ["P12345"]

    def table(fmt: str, *extra: str) -> list[list[str]]:
        result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--format", fmt,
                                     "--threshold", "0", *extra])
        assert result.exit_code == 0, result.output
        return list(csv.reader(result.stdout.splitlines(), delimiter="," if fmt == "csv" else "\t"))

    for rows in (table("csv"), table("tsv")):
        assert rows[0] == ["id", "length", "'=cmd|'_/C_calc'!A0", "nucleus", "predicted", "status", "top",
                           "top_probability", "calibration", *DOMAIN_COLUMNS]
        assert [row[0] for row in rows[1:]] == neutral
        assert {row[4] for row in rows[1:]} == {"'=cmd|'_/C_calc'!A0;nucleus"}
        # The most likely label is a text cell too.
        assert {row[6] for row in rows[1:]} <= {"'=cmd|'_/C_calc'!A0", "nucleus"}
        assert [row[0].removeprefix("'") for row in rows[1:]] == [*FORMULAS, "P12345"]  # as pandas would
        assert all(not cell.startswith(("=", "+", "-", "@")) for row in rows for cell in row)
    raw = table("tsv", "--raw-ids")
    assert [row[0] for row in raw[1:]] == [*FORMULAS, "P12345"] and raw[0][2] == "=cmd|'_/C_calc'!A0"
    jsonl = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--format", "jsonl"])
    assert [json.loads(line)["id"] for line in jsonl.stdout.splitlines()] == [*FORMULAS, "P12345"]
    one_error_line(runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--format", "csv",
                                       "--raw-ids"]), "--raw-ids is for --format tsv")


def test_formula_ids_in_comparisons_and_merged_parts(runner, tmp_path):
    import csv

    model = launch.tiny_model_dir(tmp_path / "m")
    fasta = tmp_path / "in.fasta"
    fasta.write_text(">=1+1\nMKVLAAGIVLLLSAAQ\n>=1+1_mut_K2R\nMRVLAAGIVLLLSAAQ\n>@SUM(1)\nMKV\n")
    result = runner.invoke(cli, ["predict", str(fasta), "--compare", "--model", str(model), "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(result.stdout.splitlines()))
    assert rows[1][:2] == ["'=1+1_mut_K2R", "'=1+1"]
    parts = []
    for shard in (1, 2):
        parts.append(tmp_path / f"part-{shard}.tsv")
        result = runner.invoke(cli, ["predict", str(fasta), "--model", str(model), "--shard", f"{shard}/2",
                                     "--out", str(parts[-1])])
        assert result.exit_code == 0, result.output
    merged = runner.invoke(cli, ["merge", *map(str, parts), "--fasta", str(fasta)])
    assert merged.exit_code == 0, merged.output
    assert [line.split("\t")[0] for line in merged.stdout.splitlines()] == ["id", "'=1+1", "'=1+1_mut_K2R",
                                                                              "'@SUM(1)"]


def test_spreadsheet_text_round_trips():
    from synnav_cli.predict.writer import original_text, spreadsheet_text

    for cell in ["=1", "+1", "-1", "@A", "\t=1", "\r=1", "'", "''x", "P12345", "", "a=b", "1-2"]:
        assert original_text(spreadsheet_text(cell)) == cell
        assert not spreadsheet_text(cell).startswith(("=", "+", "-", "@", "\t", "\r"))
    assert spreadsheet_text("a=b") == "a=b" and spreadsheet_text("\t=1") == "'\t=1"


def test_explain_tables_name_formula_labels_as_text(tmp_path):
    import numpy as np

    from synnav_cli.predict.explain import Explanation, write_tsv

    explanation = Explanation("=1+1", "MK", ["=cmd", "nucleus"], [0.9, 0.8], True, np.zeros((2, 2)))
    write_tsv(explanation, tmp_path / "x.tsv")
    assert (tmp_path / "x.tsv").read_text().splitlines()[0] == "position\tresidue\t'=cmd\tnucleus"
