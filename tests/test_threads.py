"""--threads / SYNNAV_THREADS, the default from affinity, cgroup quota and load, and OpenMP's
wait policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synnav_cli import console
from synnav_cli.cli.main import cli
from synnav_cli.runtime import threads

EXAMPLE = Path(__file__).parents[1] / "data" / "example.fasta"
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SYNNAV_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "text, cpus",
    [("max 100000\n", None), ("200000 100000\n", 2.0), ("150000 100000", 1.5), ("", None)],
)
def test_parse_cpu_max(text, cpus):
    assert threads.parse_cpu_max(text) == cpus


def fake_cgroup(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "proc").write_text(proc)
    return root, tmp_path / "proc"


def test_cgroup_v2_quota_limits_the_default(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    root, proc = fake_cgroup(tmp_path, "0::/job/step\n", {"job/cpu.max": "300000 100000\n"})
    assert threads.cgroup_cpu_limit(root, proc) == 3.0
    assert threads.available_cpus(root, proc) == 3
    unlimited, proc = fake_cgroup(tmp_path / "u", "0::/\n", {"cpu.max": "max 100000\n"})
    assert threads.available_cpus(unlimited, proc) == 64


def test_cgroup_v1_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "50000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    root, proc = fake_cgroup(tmp_path, "3:cpu,cpuacct:/\n", files)
    assert threads.cgroup_cpu_limit(root, proc) == 0.5
    assert threads.available_cpus(root, proc) == 1  # never below one
    files["cpu,cpuacct/cpu.cfs_quota_us"] = "-1\n"
    root, proc = fake_cgroup(tmp_path / "none", "3:cpu,cpuacct:/\n", files)
    assert threads.available_cpus(root, proc) == 8


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_default_under_restricted_affinity():
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from synnav_cli.runtime import threads; print(threads.configure(None)); "
        "import torch; print(torch.get_num_threads())"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]


def test_default_respects_omp_and_torchrun(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(threads, "running_others", lambda: 0.0)
    assert threads.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert threads.default_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3


@pytest.mark.parametrize("args, env", [(["--threads", "1"], {}), ([], {"SYNNAV_THREADS": "1"})])
def test_threads_reach_torch(runner, monkeypatch, args, env):
    seen = []
    monkeypatch.setattr(torch, "set_num_threads", seen.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 99)
    result = runner.invoke(
        cli, ["predict", str(EXAMPLE), "--device", "cpu", "-q", *args], env=env
    )
    assert result.exit_code == 0, result.output
    assert seen == [1]


def test_bad_thread_count_is_a_usage_error(runner):
    result = runner.invoke(cli, ["predict", str(EXAMPLE), "--threads", "0"])
    assert result.exit_code == 2
    assert "--threads" in result.output


@pytest.mark.parametrize(
    "cpus, others, host, chosen",
    [
        (2, 0.0, 2, 2),  # idle: every CPU
        (2, 0.4, 2, 2),
        (2, 1.0, 2, 1),  # one other busy task on two cores
        (2, 2.0, 2, 1),  # two busy: one thread, never zero
        (2, 9.0, 2, 1),
        (8, 3.0, 8, 5),
        (4, 32.0, 64, 2),  # a quarter of a half-busy host's load falls on our 4 CPUs
        (4, None, 4, 4),  # load unknown: the CPUs available
        (1, 0.0, 1, 1),
    ],
)
def test_choose_threads_leaves_busy_cpus_to_others(cpus, others, host, chosen):
    assert threads.choose_threads(cpus, others, host) == chosen


def test_running_others_reads_the_runnable_count(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("3.10 2.50 1.20 4/512 12345\n")
    assert threads.running_others(loadavg, samples=2) == 3.0  # 4 running, one of them us
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 0.5))  # no /proc: macOS
    assert threads.running_others(tmp_path / "missing", samples=2) == 1.5


def test_default_is_one_thread_on_a_busy_machine(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "running_others", lambda: 2.0)
    assert threads.default_choice() == (1, "2 CPUs available, 2 other tasks running")
    monkeypatch.setattr(threads, "running_others", lambda: 0.0)
    assert threads.default_threads() == 2
    monkeypatch.setattr(threads, "running_others", lambda: 2.0)
    monkeypatch.setenv("SLURM_JOB_ID", "7")  # the allocation's cores are the job's own
    assert threads.default_threads() == 2


def test_torchrun_ranks_do_not_count_each_other_as_load(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(threads, "running_others", lambda: 3.0)  # the other three ranks
    assert threads.default_choice() == (
        2,
        "2 CPUs per local rank, 0 other tasks running on 8 host CPUs",
    )
    monkeypatch.setattr(threads, "running_others", lambda: 7.0)  # and four busy strangers
    assert threads.default_threads() == 1


def test_wait_policy_is_passive_unless_the_user_chose():
    environ = {}
    if "torch" in sys.modules:  # it is, in this test process: nothing can be set any more
        assert "spin" in threads.prepare_openmp(environ)
        assert environ == {}
    environ = {"GOMP_SPINCOUNT": "1000"}
    assert threads.prepare_openmp(environ) == "OpenMP GOMP_SPINCOUNT=1000"
    assert environ == {"GOMP_SPINCOUNT": "1000"}


def test_cli_sets_the_wait_policy_before_torch_loads():
    """libgomp reads OMP_WAIT_POLICY once, as torch loads it: the CLI must set it first."""
    code = f"""
import os, sys
seen = []
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("OMP_WAIT_POLICY"))
sys.meta_path.insert(0, Watch())
from synnav_cli.cli.main import cli
try:
    cli.main(["predict", {str(EXAMPLE)!r}, "-q", "--device", "cpu"], standalone_mode=False)
finally:
    import torch
    print(seen, torch.get_num_threads(), file=sys.stderr)
"""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "SYNNAV_THREADS"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stderr.split()[0] == "['PASSIVE']", out.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--threads", "1", "-v"], "threads: 1 (--threads or SYNNAV_THREADS; OpenMP "),
        (["-v"], "threads: 1 (2 CPUs available, 3 other tasks running; OpenMP "),
    ],
)
def test_verbose_says_the_threads_and_why(runner, monkeypatch, args, expected):
    monkeypatch.setattr(console, "_level", 1)  # -v sets it for the process; put it back after
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "running_others", lambda: 3.0)
    result = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    assert expected in result.stderr
    quiet = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu", "-q", *args[:-1]])
    assert "threads:" not in quiet.stderr


def test_training_threads_do_not_follow_the_load(monkeypatch):
    # The thread count changes floating-point sums: a resumed or repeated training run must use
    # the same count whatever else runs, while predict leaves busy CPUs to their owners.
    from synnav_cli.runtime import threads as thread_choice

    for name in ("OMP_NUM_THREADS", "SLURM_JOB_ID", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(thread_choice, "available_cpus", lambda *a, **k: 4)
    monkeypatch.setattr(thread_choice, "running_others", lambda *a, **k: 8.0)
    monkeypatch.setattr(thread_choice.os, "cpu_count", lambda: 4)
    assert thread_choice.default_choice()[0] == 1
    assert thread_choice.default_choice(load_aware=False)[0] == 4


def test_small_operation_backbones_run_one_thread_by_default(runner, monkeypatch):
    # The bundled model's CNNs ran 1.3-1.6x slower at 2 threads than at 1 on an idle 2-core
    # CPU: the default is one thread for them, whatever the free CPUs; --threads still wins.
    monkeypatch.setattr(console, "_level", 1)
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "running_others", lambda: 0.0)
    used = []
    original = threads.fit_to_backbone

    def record(backbone, device):
        used.append(original(backbone, device))
        return used[-1]

    monkeypatch.setattr(threads, "fit_to_backbone", record)
    result = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu", "-v"])
    assert result.exit_code == 0, result.output
    assert "threads: 2 (2 CPUs available" in result.stderr
    assert "threads: 1 (backbone aacnn-ensemble runs many small operations" in result.stderr
    assert used == [1] and torch.get_num_threads() == 1
    used.clear()
    chosen = runner.invoke(cli, ["predict", str(EXAMPLE), "--device", "cpu", "--threads", "2"])
    assert chosen.exit_code == 0, chosen.output
    assert used == [2] and torch.get_num_threads() == 2


def test_other_backbones_keep_the_default(monkeypatch):
    from synnav_cli.plugins import get_backbone

    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    monkeypatch.setattr(threads, "running_others", lambda: 0.0)
    assert threads.configure(None) == 2
    assert threads.fit_to_backbone(get_backbone("esm2-8m"), torch.device("cpu")) == 2
    assert threads.fit_to_backbone(get_backbone("aacnn"), torch.device("meta")) == 2
    assert threads.fit_to_backbone(get_backbone("aacnn"), torch.device("cpu")) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own count is kept
    assert threads.configure(None) == 2
    assert threads.fit_to_backbone(get_backbone("aacnn"), torch.device("cpu")) == 2
