"""--threads / SYNNAV_THREADS, and the default from affinity and cgroup quota."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synnav_cli.cli.main import cli
from synnav_cli.runtime import threads

EXAMPLE = Path(__file__).parents[1] / "data" / "example.fasta"
SRC = Path(__file__).parents[1] / "src"


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("SYNNAV_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
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
