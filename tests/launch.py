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
import pytest

from synnav_cli import console

TESTS = Path(__file__).parent
LABELS = ["cytosol", "ER", "mitochondrion", "nucleus", "excitatory synapse", "inhibitory synapse"]
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(autouse=True)
def normal_verbosity():
    """--quiet sets a process-wide level; in-process CLI runs must not inherit another test's."""
    console.set_verbosity()
    yield
    console.set_verbosity()


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


PEAK_RSS = """
import resource, sys
from synnav_cli.cli.main import cli
try:
    cli(sys.argv[1:], prog_name="synnav", standalone_mode=False)
finally:
    print("peak_rss_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def peak_rss_kb(args: list[str], env: dict[str, str], timeout: float = 300) -> int:
    """Peak resident memory (KiB, Linux) of ``synnav ARGS`` run in a fresh process."""
    result = run([sys.executable, "-c", PEAK_RSS, *args], env, timeout)
    assert result.returncode == 0, result.stderr
    return int(result.stderr.rsplit("peak_rss_kb", 1)[1].split()[0])


def tiny_model_dir(path: Path, labels: list[str] = LABELS[:3], max_length: int = 512) -> Path:
    """An untrained model directory on the tiny backbone: cheap to make, real to load and run.

    Proteins over ``max_length`` residues are cut to that length (as ``train --max-length`` does).
    """
    import torch
    from tiny_backbone import TinyBackbone

    from synnav_cli.model import LocalizationModel
    from synnav_cli.modeldir import save_model_dir

    backbone = TinyBackbone()
    torch.manual_seed(0)
    model = LocalizationModel(backbone.build_encoder(), backbone.embedding_dim, len(labels))
    meta = {"backbone": backbone.id, "labels": labels, "thresholds": {name: 0.5 for name in labels},
            "config": {"max_length": max_length}}
    return save_model_dir(path, model, meta, encoder_frozen=False)


def random_dataset(
    path: Path, count: int, *, rate: float = 0.1, seed: int = 0, split: str = "dev",
    prefix: str = "P",
) -> Path:
    """Random proteins (30-79 residues), all in ``split``, each of LABELS[:3] true for about
    ``rate`` of them; entries PREFIX00000, PREFIX00001, ..."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("ACDEFGHIKLMNPQRSTVWY"))
    records = []
    for i in range(count):
        sequence = "".join(rng.choice(letters, size=int(rng.integers(30, 80))))
        labels = {name: int(rng.random() < rate) for name in LABELS[:3]}
        records.append({"entry": f"{prefix}{i:05d}", "sequence": sequence, "labels": labels,
                        "split": split})
    path.write_text(json.dumps(records))
    return path


def write_fasta(path: Path, count: int, *, lengths: tuple[int, int] = (10, 40), seed: int = 0) -> Path:
    """``count`` random proteins named p0, p1, ..., written as they are drawn."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(RESIDUES))
    with path.open("w") as handle:
        for i in range(count):
            handle.write(f">p{i}\n{''.join(rng.choice(letters, size=int(rng.integers(*lengths))))}\n")
    return path


def slowed_cli(module: str, function: str, chunk_records: int, delay: float) -> str:
    """Source for ``python -c``: the synnav CLI with ``module.function`` slowed by ``delay``
    seconds a call and ``module.CHUNK_RECORDS`` set, a long run to race against or kill."""
    return f"""
import sys, time
import {module} as target
original = target.{function}
def slow(*args, **kwargs):
    time.sleep({delay})
    return original(*args, **kwargs)
target.{function} = slow
target.CHUNK_RECORDS = {chunk_records}
from synnav_cli.cli.main import cli
cli(sys.argv[1:], prog_name="synnav")
"""
