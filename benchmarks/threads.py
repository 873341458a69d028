"""`synnav predict` with the bundled model at the default thread count, 1 and 2 threads.

Runs are interleaved (default, 1, 2, default, 1, 2, ...), each a fresh `synnav predict` process,
so drifting load from other jobs hits every setting alike. With ``--burners N`` the same rounds
run again while N busy-looping Python processes compete for the CPUs. Prints one table per
phase with the median wall time, the CPU time the run used, the ratio to the best setting, the
threads the default chose (``-v``) and the load around it. ``--spin`` adds 2 threads that spin
while they wait (``GOMP_SPINCOUNT=300000``, libgomp's own default, which synnav used to get).

    python benchmarks/threads.py --proteins 600 --rounds 3 --burners 2
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def write_fasta(path: Path, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w") as handle:
        for i in range(count):
            length = min(2000, max(50, int(rng.lognormvariate(6.0, 0.6))))  # median ~400
            handle.write(f">P{i}\n{''.join(rng.choices(AMINO, k=length))}\n")


SPIN = "2-spin"


def run_once(fasta: Path, setting: str) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds and the ``threads:`` line of one fresh ``synnav predict``."""
    command = [sys.executable, "-m", "synnav_cli", "predict", str(fasta), "-v", "--device", "cpu"]
    hidden = {"OMP_NUM_THREADS", "SYNNAV_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    if setting == SPIN:
        env["GOMP_SPINCOUNT"] = "300000"
    if setting != "default":
        command += ["--threads", setting.split("-")[0]]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    # The last line counts: the default is taken down to 1 once the model is known
    # (Backbone.cpu_threads_pay), which -v reports on a second line.
    chosen = re.findall(r"^threads: (\d+)", done.stderr, re.MULTILINE)
    return wall, cpu, chosen[-1] if chosen else "?"


def phase(name: str, fasta: Path, rounds: int, settings: list[str]) -> None:
    runs: dict[str, list[tuple[float, float, str]]] = {s: [] for s in settings}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for setting in settings:
            runs[setting].append(run_once(fasta, setting))
            wall, cpu, chosen = runs[setting][-1]
            print(f"{setting}: {wall:.1f} s, CPU {cpu:.1f} s, threads {chosen}", file=sys.stderr)
        loads.append(os.getloadavg()[0])
    medians = {s: statistics.median(r[0] for r in values) for s, values in runs.items()}
    best = min(medians.values())
    print(f"\n{name}: load average (1 min) {min(loads):.1f}-{max(loads):.1f}")
    print("| threads | median s | runs (s) | median CPU s | time / best |")
    print("|---|---:|---|---:|---:|")
    for setting, values in runs.items():
        label = setting
        if setting == "default":
            label = f"default (chose {', '.join(r[2] for r in values)})"
        elif setting == SPIN:
            label = "2, spinning (GOMP_SPINCOUNT=300000)"
        walls = ", ".join(f"{r[0]:.1f}" for r in values)
        cpu = statistics.median(r[1] for r in values)
        print(
            f"| {label} | {medians[setting]:.1f} | {walls} | {cpu:.1f} "
            f"| {medians[setting] / best:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burners", type=int, default=2)
    parser.add_argument("--spin", action="store_true", help="add 2 spinning threads (slow)")
    args = parser.parse_args()
    from synnav_cli.runtime.threads import available_cpus, default_threads

    print(f"host CPUs {os.cpu_count()}, available {available_cpus()}, default {default_threads()}")
    settings = ["default", "1", "2"] + ([SPIN] if args.spin else [])
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "random.fasta"
        write_fasta(fasta, args.proteins)
        phase("without burners", fasta, args.rounds, settings)
        if args.burners:
            burners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.burners)
            ]
            try:
                time.sleep(2)
                phase(f"with {args.burners} CPU burners", fasta, args.rounds, settings)
            finally:
                for burner in burners:
                    burner.kill()
                    burner.wait()


if __name__ == "__main__":
    main()
