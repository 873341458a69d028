"""How many CPU threads torch uses: ``--threads``, ``SYNNAV_THREADS``, or the CPUs we may use.

torch's own default is the host's core count. On a shared node, in a SLURM allocation or in a
container that is more threads than the process may run at once, and oversubscribed threads
spin against each other (docs/benchmarks.md). The default here is what the process may actually
use: its CPU affinity, further limited by a cgroup CPU quota (v2 ``cpu.max``, v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``), shared among the local processes of a torchrun
job, and never below 1. An explicit ``OMP_NUM_THREADS`` is respected as the default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line: ``"200000 100000"`` -> 2.0, ``"max ..."``
    -> None (no limit)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_dirs(root: Path, proc_cgroup: Path) -> tuple[list[Path], list[Path]]:
    """Directories that may hold this process's CPU limits: (cgroup v2, cgroup v1)."""
    v2, v1 = [], []
    for line in (_read(proc_cgroup) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = Path(path.lstrip("/"))
        chain = [relative, *relative.parents]  # a parent's quota limits its children
        if hierarchy == "0" and controllers == "":
            v2 += [root / p for p in chain]
        elif "cpu" in controllers.split(","):
            v1 += [root / controllers / p for p in chain]
    v2.append(root)
    v1 += [root / "cpu", root / "cpu,cpuacct"]
    return v2, v1


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The tightest CPU quota (in CPUs) over this process's cgroups, or None without one."""
    v2, v1 = _cgroup_dirs(root, proc_cgroup)
    limits = []
    for directory in v2:
        text = _read(directory / "cpu.max")
        if text is not None and (limit := parse_cpu_max(text)) is not None:
            limits.append(limit)
    for directory in v1:
        quota = _read(directory / "cpu.cfs_quota_us")
        period = _read(directory / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            limit = parse_cpu_max(f"{quota.strip()} {period.strip()}")
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def available_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may run on: affinity, limited by a cgroup quota; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit(root, proc_cgroup)
    if quota is not None:
        cpus = min(cpus, math.floor(quota))  # 1.5 CPUs of quota run 1 thread unthrottled
    return max(1, cpus)


def default_threads() -> int:
    """The thread count used without ``--threads``/``SYNNAV_THREADS``."""
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    return max(1, available_cpus() // processes)


def configure(threads: int | None) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_threads`); returns it."""
    import torch

    count = default_threads() if threads is None else threads
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count
