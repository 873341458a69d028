"""How many CPU threads torch uses, and how they wait: ``--threads``, ``SYNNAV_THREADS``, or a
default from the CPUs we may use and how busy they are.

torch's own default is the host's core count. On a shared node, in a SLURM allocation or in a
container that is more threads than the process may run at once. The default here starts from
what the process may use: its CPU affinity, further limited by a cgroup CPU quota (v2
``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), shared among the local processes of
a torchrun job, and never below 1. An explicit ``OMP_NUM_THREADS`` is respected as the default.

Other people's work counts too: CPUs already running other tasks are left to them, so on a busy
machine the default is fewer threads, down to one (:func:`choose_threads`). And torch's OpenMP
threads are told to sleep while they wait (``OMP_WAIT_POLICY=PASSIVE``, :func:`prepare_openmp`):
by default libgomp spins at every barrier, and a thread that spins on a busy core holds the CPU
its partner needs, which made two threads 7-15x slower than one (docs/benchmarks.md).

Some models gain nothing from threads at all: an encoder of many small operations (the aacnn
CNNs of the bundled model) spends more time waking its partner thread than the partner saves,
even on an idle machine. Once the model is known, :func:`fit_to_backbone` takes the default down
to one thread for a backbone that says so (``Backbone.cpu_threads_pay``); a count the user chose
is kept.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

from synnav_cli import console

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_LOADAVG = Path("/proc/loadavg")
# libgomp reads these once, when torch loads it; either one set by the user is left alone.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
# Whether the count configure() set is synnav's default (no --threads, SYNNAV_THREADS or
# OMP_NUM_THREADS): only a default is fitted to the backbone afterwards.
_default_in_use = False


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


def running_others(loadavg: Path = PROC_LOADAVG, samples: int = 9) -> float | None:
    """Tasks running on the host besides this one, now: the median of a few samples of the
    kernel's runnable count (``/proc/loadavg``, fourth field), over about 40 ms. The 1-minute
    load average is the fallback (macOS): it lags, and it still holds our own previous run
    when synnav runs back to back, so it is a poorer guide. None where neither exists."""
    counts = []
    for sample in range(samples):
        text = _read(loadavg)
        try:
            counts.append(int(text.split()[3].split("/")[0]) - 1)  # the reader is running
        except (AttributeError, IndexError, ValueError):
            break
        if sample + 1 < samples:
            time.sleep(0.005)
    if counts:
        return float(statistics.median(counts))
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def choose_threads(cpus: int, others: float | None, host_cpus: int) -> int:
    """Threads for ``cpus`` usable CPUs while ``others`` tasks run on a host of ``host_cpus``.

    The others are taken as spread evenly over the host, so ``others * cpus / host_cpus`` of
    them run on our CPUs; the threads are the CPUs left over, rounded, from 1 to ``cpus``. Two
    CPUs with 2 others busy: 1 thread; with none: 2. ``others`` None (unknown): ``cpus``.
    """
    if others is None or others <= 0:
        return max(1, cpus)
    busy = others * cpus / max(host_cpus, cpus)
    return max(1, min(cpus, math.floor(cpus - busy + 0.5)))


def default_choice(load_aware: bool = True) -> tuple[int, str]:
    """The thread count used without ``--threads``/``SYNNAV_THREADS``, and why.

    ``load_aware`` False leaves other tasks out of it: training wants the same count every
    time, since the thread count changes the order of floating-point sums, and a model trained
    again with the same seed, or resumed, must come out bit for bit the same whatever else ran.
    """
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    local = os.environ.get("LOCAL_WORLD_SIZE", "1")
    processes = int(local) if local.isdigit() and int(local) > 0 else 1
    cpus = max(1, available_cpus() // processes)
    where = f"{cpus} CPUs available" if processes == 1 else f"{cpus} CPUs per local rank"
    if os.environ.get("SLURM_JOB_ID"):
        # SLURM hands a job its own cores; the host's runnable count is other jobs' business.
        return cpus, f"{where}, a SLURM job"
    if not load_aware:
        return cpus, f"{where}; training does not follow the machine's load, to repeat exactly"
    others = running_others()
    if others is None:
        return cpus, where
    others = max(0.0, others - (processes - 1))  # sibling ranks already have their share
    host = max(os.cpu_count() or cpus, cpus)
    on_host = f" on {host} host CPUs" if host != cpus else ""
    return choose_threads(cpus, others, host), f"{where}, {others:g} other tasks running{on_host}"


def default_threads() -> int:
    """The thread count used without ``--threads``/``SYNNAV_THREADS``."""
    return default_choice()[0]


def prepare_openmp(environ=os.environ) -> str:
    """Make torch's OpenMP threads sleep rather than spin while they wait for each other
    (``OMP_WAIT_POLICY=PASSIVE``). libgomp reads the setting once, as torch loads it, so this
    only works before ``import torch``; a user's own ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``
    is left alone. Returns how the threads wait, for ``-v``."""
    for name in WAIT_VARIABLES:
        if name in environ:
            return f"OpenMP {name}={environ[name]}"
    if "torch" in sys.modules:
        return (
            "OpenMP threads spin while they wait: torch was loaded before OMP_WAIT_POLICY was set"
        )
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "OpenMP OMP_WAIT_POLICY=PASSIVE"


def configure(threads: int | None, load_aware: bool = True) -> int:
    """Set torch's intra-op threads to ``threads`` (None: :func:`default_choice`), after
    :func:`prepare_openmp`; says which and why with ``-v``. Returns the count."""
    from synnav_cli import console

    global _default_in_use
    waiting = prepare_openmp()
    count, why = (
        default_choice(load_aware) if threads is None else (threads, "--threads or SYNNAV_THREADS")
    )
    _default_in_use = threads is None and why != "OMP_NUM_THREADS"
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    console.detail(f"threads: {count} ({why}; {waiting})")
    return count


def fit_to_backbone(backbone, device) -> int:
    """Take the default thread count down to one for a backbone whose forward is many small
    operations (``backbone.cpu_threads_pay`` False) when it runs on the CPU; a count the user
    chose, and other backbones and devices, are left as they are. Returns the count in use."""
    import torch

    count = torch.get_num_threads()
    if (
        not _default_in_use
        or getattr(device, "type", str(device)) != "cpu"
        or getattr(backbone, "cpu_threads_pay", True)
        or count == 1
    ):
        return count
    torch.set_num_threads(1)
    console.detail(
        f"threads: 1 (backbone {backbone.id} runs many small operations: more threads wait "
        "more than they work; --threads N overrides)"
    )
    return 1
