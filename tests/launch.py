"""Running synnav in subprocesses (torchrun, signals, memory) with the tiny test backbone.

Subprocesses do not see the plugin conftest registers, so they get it the way an installed
plugin arrives: a distribution with a ``synnav`` entry point, here made on PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).parent
LABELS = ["cytosol", "ER", "mitochondrion", "nucleus", "excitatory synapse", "inhibitory synapse"]
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


def dataset_path(tmp_path: Path, proteins: int = 120, seed: int = 0) -> Path:
    """tests/data/small.json when present, else a small random labelled dataset with splits."""
    shared = TESTS / "data" / "small.json"
    if shared.exists():
        return shared
    rng = np.random.default_rng(seed)
    records = []
    for i in range(proteins):
        length = int(rng.integers(20, 120))
        sequence = "M" + "".join(rng.choice(list(RESIDUES), size=length - 1))
        labels = {}
        for j, name in enumerate(LABELS):
            draw = rng.random()
            # Some unknown labels, and a signal the model can learn (residue content).
            labels[name] = None if draw < 0.15 else int(sequence.count(RESIDUES[j]) > length / 20)
        split = "train" if i % 10 < 7 else "dev" if i % 10 < 9 else "test"
        records.append({"entry": f"P{i:05d}", "sequence": sequence, "labels": labels, "split": split})
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(records))
    return path


def plugin_path(root: Path) -> Path:
    """A directory that, on PYTHONPATH, registers the tiny backbone through an entry point."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "synnav_tiny_entry.py").write_text("from tiny_backbone import TinyPlugin\nplugin = TinyPlugin()\n")
    info = root / "synnav_tiny_test-0.0.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: synnav-tiny-test\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text("[synnav]\ntiny-test-plugin = synnav_tiny_entry:plugin\n")
    return root


def environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    extra = [str(plugin_path(tmp_path / "plugin")), str(TESTS)]
    env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(command: list[str], env: dict[str, str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``command`` in its own process group, all of which is killed if it outlives ``timeout``.

    torchrun's workers would outlive a plain ``subprocess.run`` timeout, which kills the launcher
    only.
    """
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True, **kwargs)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{' '.join(command[:6])} ... ran over {timeout}s:\n{stderr[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def synnav(args: list[str], env: dict[str, str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "synnav_cli", *args], env, timeout, **kwargs)


def torchrun(processes: int, args: list[str], env: dict[str, str], timeout: float = 300,
             **kwargs) -> subprocess.CompletedProcess:
    """``torchrun --standalone`` (a free rendezvous port on this host) with ``processes`` workers."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "synnav_cli", *args]
    return run(command, env, timeout, **kwargs)
