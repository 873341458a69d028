"""``synnav ARGS`` in this process, plus what the device check records about it.

``python benchmarks/device/probe.py train ...`` runs the CLI exactly as ``synnav`` (or
``python -m synnav_cli``, what torchrun launches) does. With ``SYNNAV_PROBE_DIR`` set it also
writes, there, for each process (``RANK``, 0 outside torchrun):

- ``steps-<rank>``: optimiser steps taken so far, rewritten after each step (the check sends
  SIGTERM once training is under way);
- ``probe-<rank>.json`` at exit: exit status, wall time, peak GPU memory (allocated and
  reserved, from torch's allocator), peak resident memory, the GPU's name.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

START = time.monotonic()
DIR = Path(os.environ["SYNNAV_PROBE_DIR"]) if os.environ.get("SYNNAV_PROBE_DIR") else None
RANK = os.environ.get("RANK", "0")
_steps = 0
_exit: dict = {"code": None}


def _count_step(optimizer, args, kwargs) -> None:
    global _steps
    _steps += 1
    tmp = DIR / f"steps-{RANK}.tmp"
    tmp.write_text(str(_steps))
    tmp.replace(DIR / f"steps-{RANK}")


def _record() -> None:
    report: dict = {
        "rank": int(RANK),
        "exit_code": _exit["code"],
        "seconds": round(time.monotonic() - START, 2),
        "optimizer_steps": _steps,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        report.update(
            gpu=torch.cuda.get_device_name(device),
            cuda_device=device,
            peak_gpu_allocated_bytes=torch.cuda.max_memory_allocated(device),
            peak_gpu_reserved_bytes=torch.cuda.max_memory_reserved(device),
        )
    (DIR / f"probe-{RANK}.json").write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    if DIR is not None:
        DIR.mkdir(parents=True, exist_ok=True)
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(_count_step)
        atexit.register(_record)
    from synnav_cli.cli.main import cli

    try:
        cli(sys.argv[1:], prog_name="synnav")
    except SystemExit as done:
        _exit["code"] = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        raise


if __name__ == "__main__":
    main()
