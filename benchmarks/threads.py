"""`synnav predict` with the bundled model at the default thread count, 1 and 2 threads.

Runs are interleaved (default, 1, 2, default, 1, 2, ...), each a fresh `synnav predict` process,
so drifting load from other jobs hits every setting alike. With ``--burners N`` the same rounds
run again while N busy-looping Python processes compete for the CPUs. Prints one table per
phase with the median wall time, the ratio to the default, and the load average around it.

    python benchmarks/threads.py --proteins 2000 --rounds 3 --burners 2
"""

from __future__ import annotations

import argparse
import os
import random
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


def run_once(fasta: Path, threads: str | None) -> float:
    command = [sys.executable, "-m", "synnav_cli", "predict", str(fasta), "-q", "--device", "cpu"]
    if threads is not None:
        command += ["--threads", threads]
    env = {k: v for k, v in os.environ.items() if k not in {"OMP_NUM_THREADS", "SYNNAV_THREADS"}}
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def phase(name: str, fasta: Path, rounds: int, settings: list[str | None]) -> None:
    times: dict[str | None, list[float]] = {s: [] for s in settings}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for setting in settings:
            times[setting].append(run_once(fasta, setting))
        loads.append(os.getloadavg()[0])
    base = statistics.median(times[None])
    print(f"\n{name}: load average (1 min) {min(loads):.1f}-{max(loads):.1f}")
    print("| threads | median s | runs (s) | time / default |")
    print("|---|---:|---|---:|")
    for setting, values in times.items():
        label = "default" if setting is None else setting
        median = statistics.median(values)
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {label} | {median:.1f} | {runs} | {median / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--burners", type=int, default=2)
    args = parser.parse_args()
    from synnav_cli.runtime.threads import available_cpus, default_threads

    print(f"host CPUs {os.cpu_count()}, available {available_cpus()}, default {default_threads()}")
    settings: list[str | None] = [None, "1", "2"]
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
