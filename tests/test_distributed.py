"""torchrun with 2 processes (gloo on CPU) against 1 process: the same model, predictions, scores.

Each launch costs tens of seconds of process start-up, so the torchrun tests run as their own
bounded CI step (.ci/distributed.sh, which sets SYNNAV_TEST_DISTRIBUTED=1); the main suite skips
them and runs the single-process tests of the sharding helpers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from pathlib import Path

import launch
import numpy as np
import pytest

from synnav_cli.errors import UserError
from synnav_cli.runtime import distributed

torchrun_step = pytest.mark.skipif(os.environ.get("SYNNAV_TEST_DISTRIBUTED") != "1",
                                   reason="2-process runs are the separate CI step .ci/distributed.sh")

TRAIN = ["--backbone", "tiny", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3", "--seed", "1",
         "--device", "cpu", "--max-tokens", "4000"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    env = launch.environment(root)
    env.update(SYNNAV_DATA_DIR=str(root / "userdata"), SYNNAV_CACHE_DIR=str(root / "cache"), HF_HUB_OFFLINE="1")
    data = launch.dataset_path(root)
    one = launch.synnav(["train", "--data", str(data), "--out", str(root / "one"), *TRAIN], env)
    assert one.returncode == 0, one.stderr
    two = launch.torchrun(2, ["train", "--data", str(data), "--out", str(root / "two"), *TRAIN], env)
    assert two.returncode == 0, two.stderr
    records = json.loads(Path(data).read_text())
    fasta = root / "proteins.fasta"
    # One protein over the tiny backbone's 512 residues, scored as windows.
    long_protein = "M" + "ACDEFGHIKLMNPQRSTVWY" * 40
    fasta.write_text("".join(f">{r['entry']}\n{r['sequence']}\n" for r in records) + f">long\n{long_protein}\n")
    return {"root": root, "env": env, "data": data, "fasta": fasta, "two_stdout": two.stdout,
            "one": root / "one", "two": root / "two"}


def _close(a, b, tolerance: float) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


@torchrun_step
@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(setup):
    one = json.loads((setup["one"] / "synnav-model.json").read_text())
    two = json.loads((setup["two"] / "synnav-model.json").read_text())
    assert two["best_epoch"] == one["best_epoch"]
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "dev_mean_roc_auc", "dev_mean_pr_auc"):
            assert _close(a[key], b[key], 1e-4), (key, a, b)
    for split in ("train", "dev", "test"):
        for name, metrics in one["metrics"][split]["labels"].items():
            for key in ("roc_auc", "pr_auc"):
                assert _close(metrics[key], two["metrics"][split]["labels"][name][key], 1e-3), (split, name, key)
    # Rank 0 alone writes and prints: one path on stdout, no stray files beside the model.
    assert setup["two_stdout"].splitlines() == [str(setup["two"])]
    assert sorted(p.name for p in setup["root"].iterdir() if p.name.startswith("two")) == ["two"]


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text), delimiter="\t"))


@torchrun_step
@pytest.mark.slow
def test_two_processes_predict_what_one_process_predicts(setup):
    args = ["predict", str(setup["fasta"]), "--model", str(setup["one"]), "--device", "cpu", "--long", "window",
            "--max-tokens", "3000", "-q"]
    one = launch.synnav(args, setup["env"])
    assert one.returncode == 0, one.stderr
    out = setup["root"] / "two.tsv"
    two = launch.torchrun(2, [*args, "--out", str(out)], setup["env"])
    assert two.returncode == 0, two.stderr
    assert two.stdout == ""
    expected, got = _rows(one.stdout), _rows(out.read_text())
    assert got[0] == expected[0]
    assert [r[0] for r in got] == [r[0] for r in expected]  # input order
    status, labels = expected[0].index("status"), slice(2, expected[0].index("predicted"))
    assert expected[-1][status] == got[-1][status] == "windowed:3"
    for a, b in zip(expected[1:], got[1:], strict=True):
        assert a[1] == b[1] and a[status] == b[status]
        assert all(abs(float(x) - float(y)) <= 2e-4 for x, y in zip(a[labels], b[labels], strict=True))
    assert not out.with_name("two.tsv.partial").exists()

    # Standard input works too: rank 0 reads it and hands the other rank its share.
    piped = launch.torchrun(2, args[:1] + ["-"] + args[2:], setup["env"],
                            stdin=setup["fasta"].open())
    assert piped.returncode == 0, piped.stderr
    assert [r[0] for r in _rows(piped.stdout)] == [r[0] for r in expected]


@torchrun_step
@pytest.mark.slow
def test_two_processes_evaluate_as_one_process_does(setup):
    args = ["evaluate", "--model", str(setup["one"]), "--data", str(setup["data"]), "--split", "all",
            "--format", "json", "--device", "cpu", "-q"]
    one = launch.synnav(args, setup["env"])
    two = launch.torchrun(2, args, setup["env"])
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    a, b = json.loads(one.stdout), json.loads(two.stdout)  # printed once: it parses as one document
    assert a["proteins"] == b["proteins"]
    for name, metrics in a["labels"].items():
        for key in ("roc_auc", "pr_auc", "f1"):
            assert _close(metrics[key], b["labels"][name][key], 1e-3), (name, key)


@torchrun_step
@pytest.mark.slow
def test_a_bad_record_stops_every_rank_with_one_error(setup):
    bad = setup["root"] / "bad.fasta"
    bad.write_text(">a\nMKV\n>b\nMK1V\n")
    result = launch.torchrun(2, ["predict", str(bad), "--model", str(setup["one"]), "--device", "cpu"],
                             setup["env"], timeout=120)
    assert result.returncode != 0
    assert "Error: 1 of 2 records" in result.stderr and "record 'b' contains characters" in result.stderr
    assert "Traceback" not in result.stderr.split("Error:")[0]


@torchrun_step
@pytest.mark.slow
def test_two_processes_embed_what_one_process_embeds(tmp_path):
    from synnav_cli.predict.embed_read import read_embeddings

    env = launch.environment(tmp_path)
    env.update(SYNNAV_DATA_DIR=str(tmp_path / "userdata"), SYNNAV_CACHE_DIR=str(tmp_path / "cache"),
               HF_HUB_OFFLINE="1")
    # 31 proteins, one over the tiny backbone's 512 residues: an odd share for each rank.
    fasta = launch.write_fasta(tmp_path / "in.fasta", 31, lengths=(20, 600))
    args = ["embed", str(fasta), "-b", "tiny", "--per-residue", "--device", "cpu", "--max-tokens", "3000", "-q"]
    one = launch.synnav([*args, "--out", str(tmp_path / "one.npz")], env)
    assert one.returncode == 0, one.stderr
    two = launch.torchrun(2, [*args, "--out", str(tmp_path / "two.h5")], env)
    assert two.returncode == 0, two.stderr
    assert two.stdout == ""
    expected, got = read_embeddings(tmp_path / "one.npz"), read_embeddings(tmp_path / "two.h5")
    assert got["ids"].tolist() == expected["ids"].tolist()  # input order
    for key in ("lengths", "offsets"):
        assert got[key].tolist() == expected[key].tolist()
    for key in ("embeddings", "residue_embeddings"):
        np.testing.assert_allclose(got[key], expected[key], atol=2e-4, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("two")) == ["two.h5"]


@torchrun_step
@pytest.mark.slow
def test_two_processes_fine_tune_esm2_as_one_process_does(tmp_path):
    """The real EsmModel (contact head and all) through the real fine-tuning loop under DDP: it
    used to stop at the second step, on the contact head's missing gradient."""
    from hub_fixture import cache_tiny_weights

    env = launch.environment(tmp_path)
    env.update(SYNNAV_DATA_DIR=str(tmp_path / "userdata"), SYNNAV_CACHE_DIR=str(tmp_path / "cache"),
               HF_HUB_OFFLINE="1", SYNNAV_OFFLINE="1", SYNNAV_TEST_TINY_BACKBONES="1")
    cache_tiny_weights("esm2_8m", tmp_path / "cache" / "hub")
    data = launch.dataset_path(tmp_path)
    args = ["train", "--data", str(data), "--backbone", "esm2_8m", "--epochs", "2", "--batch-size", "16",
            "--lr", "1e-3", "--seed", "1", "--device", "cpu", "--max-tokens", "2000", "--max-length", "200"]
    one = launch.synnav([*args, "--out", str(tmp_path / "one")], env)
    assert one.returncode == 0, one.stderr
    two = launch.torchrun(2, [*args, "--out", str(tmp_path / "two")], env)
    assert two.returncode == 0, two.stderr
    a = json.loads((tmp_path / "one" / "synnav-model.json").read_text())
    b = json.loads((tmp_path / "two" / "synnav-model.json").read_text())
    assert len(a["history"]) == len(b["history"]) == 2
    for x, y in zip(a["history"], b["history"], strict=True):
        assert _close(x["train_loss"], y["train_loss"], 1e-4), (x, y)


GATHER_SCRIPT = """
import json, sys
import numpy as np
import torch.distributed as dist
from synnav_cli.runtime import distributed

distributed.init()
distributed.PIECE_BYTES = 3000  # a few items a piece: several gathers a rank
received, gathers = [], []
all_gather_object, gather_object = dist.all_gather_object, dist.gather_object

def spy_all_gather(object_list, obj, *args, **kwargs):
    all_gather_object(object_list, obj, *args, **kwargs)
    received.extend(object_list)

def spy_gather(obj, object_gather_list=None, *args, **kwargs):
    gather_object(obj, object_gather_list, *args, **kwargs)
    gathers.append(1)
    received.extend(object_gather_list or [])

dist.all_gather_object, dist.gather_object = spy_all_gather, spy_gather

def embed(part):  # as embed's per-residue rows: one array of n rows per item n
    return [(np.full(4, n, np.float32), np.full((n, 100), n, np.float32)) for n in part]

result = distributed.map_sharded(embed, list(range(1, 12)))

def arrays(value):
    if isinstance(value, np.ndarray):
        return 1
    return sum(arrays(v) for v in value) if isinstance(value, (list, tuple)) else 0

report = {"result": None if result is None else [[float(a[0]), b.shape[0]] for a, b in result],
          "arrays_received": arrays(received), "gathers": len(gathers)}
with open(f"{sys.argv[1]}/rank-{distributed.rank()}.json", "w") as handle:
    json.dump(report, handle)
"""


@torchrun_step
@pytest.mark.slow
def test_only_rank_0_receives_the_mapped_arrays_in_pieces(tmp_path):
    """embed --per-residue's results reach rank 0 alone, a bounded piece at a time; the other
    ranks receive none of them (they used to get every rank's, a few GB a chunk)."""
    script = tmp_path / "gather.py"
    script.write_text(GATHER_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(script), str(tmp_path)]
    result = launch.run(command, launch.environment(tmp_path), timeout=180)
    assert result.returncode == 0, result.stderr
    main, other = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert other["arrays_received"] == 0 and other["result"] is None
    assert main["result"] == [[float(n), n] for n in range(1, 12)]  # input order
    assert main["arrays_received"] == 2 * 11 and main["gathers"] == other["gathers"] > 2


LONE_RANK_SCRIPT = """
from datetime import timedelta
from synnav_cli.errors import UserError
from synnav_cli.runtime import distributed

distributed.WAIT_NOTICE_SECONDS = 1
distributed.TIMEOUT = timedelta(seconds=6)
try:
    distributed.init()
except UserError as error:
    print(f"Error: {error}")
"""


def test_a_lone_rank_0_says_once_what_it_waits_for(tmp_path):
    """torchrun with a rank missing: rank 0 blocks in the rendezvous; after a few seconds it says
    in one line that it waits for the others, and where (it used to wait in silence)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = launch.environment(tmp_path)
    env.update(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    result = launch.run([sys.executable, "-c", LONE_RANK_SCRIPT], env, timeout=120)
    notices = [line for line in result.stderr.splitlines() if "waiting for" in line]
    assert len(notices) == 1 and "1 of 2" in notices[0] and f"127.0.0.1:{port}" in notices[0], result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout.startswith("Error: ") and result.stdout.count("\n") == 1, result.stdout


def test_pieces_hold_a_bounded_number_of_bytes_in_order():
    items = [(np.zeros(n, np.float32), np.zeros((n, 2), np.float32)) for n in (5, 5, 10, 2, 1, 1)]
    runs = distributed.pieces(items, limit=120)
    assert [len(run) for run in runs] == [2, 1, 3]  # 60 + 60 B, 120 B, 24 + 12 + 12 B
    assert [item for run in runs for item in run] == items
    assert [len(run) for run in distributed.pieces([np.zeros(100)] * 2, limit=8)] == [1, 1]  # each alone
    assert [len(run) for run in distributed.pieces([None, "x"], limit=100)] == [1, 1]  # 64 B apiece
    assert distributed.pieces([]) == []


@pytest.mark.parametrize("count", [1, 3, 7])
def test_shards_partition_the_input_round_robin(count):
    items = list(range(20))
    parts = [list(distributed.take_shard(iter(items), i, count)) for i in range(count)]
    assert sorted(x for part in parts for x in part) == items
    assert all(part == items[i::count] for i, part in enumerate(parts))
    assert distributed.parse_shard(f"{count}/{count}") == (count - 1, count)


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "x/2", "1", "1/2/3", ""])
def test_bad_shard_text_is_a_user_error(text):
    with pytest.raises(UserError, match="--shard"):
        distributed.parse_shard(text)


def test_one_process_helpers_answer_for_one_process():
    assert not distributed.active() and distributed.world_size() == 1 and distributed.is_main()
    assert [len(c) for c in distributed.broadcast_chunks(iter(range(5)), 2)] == [2, 2, 1]
    assert list(distributed.broadcast_chunks(None, 2)) == []
    scored = distributed.score_sharded(lambda part: np.array([[float(x)] for x in part]), [3, 1, 2])
    assert scored.tolist() == [[3.0], [1.0], [2.0]]
    assert distributed.gather("x") == ["x"] and distributed.broadcast(5) == 5
    assert distributed.sum_across(2.5) == 2.5 and distributed.any_rank(True)
    assert distributed.min_across(7) == 7
    assert distributed.map_sharded(lambda part: [x * 2 for x in part], [3, 1, 2]) == [6, 2, 4]
    assert distributed.gather_to_main([1, 2]) == [[1, 2]]
