"""The device call: everything one lent GPU machine should show, in one bounded command.

``bash benchmarks/device/run.sh`` (which runs this file) on the GPU machine, with the wheels of
``fetch_wheels.sh`` carried along; ``--smoke`` runs the same steps on CPU with the tiny backbones
(CI). Steps, each in its own process, under its own time limit, inside one overall budget; a
failure or a timeout is recorded and the next step runs:

``install``            the carried wheels whose distributions this Python lacks, installed
                       offline into a folder of their own (torch and the rest left alone)
``environment``        versions, the GPU, its compute mode; every synnav dependency imported
``gpu_check``          ``benchmarks/gpu_check.py`` (roofline, attention paths, prediction and
                       training throughput, memory model, out-of-memory recovery, compile)
``weights``            random full-size ESM C 600M (bf16 ``.pth``) and ESM2 8M (``config.json`` +
                       ``model.safetensors``) laid out in a hub cache as the real loader expects
``train_interrupted``  ``synnav train --backbone esmc600m`` through the CLI; SIGTERM once it has
                       taken its first optimiser steps: it must stop with a checkpoint
``train_resume``       ``synnav train --resume`` of that run: it must finish the model
``predict_explain``    ``synnav predict --explain`` of one long protein with that model
``train_esm2``         ``synnav train --backbone esm2_8m`` (transformers' EsmModel, contact head
                       and all)
``torchrun_train``     ``torchrun --nproc-per-node 2 ... train`` on the one device (where the
                       GPU's compute mode lets two processes share it); recorded either way

Each step records its status (ok, failed, timeout, skipped), wall time, peak GPU memory (torch's
allocator, from ``probe.py``, per process), exit status and the tail of its stderr. Results go
to ``$OUT/<date>-<device>-device-check.json`` (rewritten after every step) and gpu_check's to
``$OUT/<date>-<device>-gpu-check.json``, named to be copied into ``benchmarks/results/`` as they
are. ``python benchmarks/device/check.py --markdown FILE`` prints a results file's table.

Exit status: 0 when every step is ok (a step skipped for want of a GPU or of wheels counts as
ok), 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROBE = HERE / "probe.py"
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
LABELS = ["cytosol", "ER", "mitochondrion", "nucleus", "excitatory synapse", "inhibitory synapse"]
# Import names of synnav's dependencies where they differ from the distribution's.
IMPORT_NAMES = {"biopython": "Bio", "scikit-learn": "sklearn", "huggingface_hub": "huggingface_hub"}
# predict --explain draws its figures with matplotlib (the plots extra).
EXTRA_DEPENDENCIES = ("matplotlib",)
TAIL = 2500  # characters of stderr kept per step


@dataclass(frozen=True)
class Profile:
    """Sizes of one kind of run: on the GPU machine, or the CPU smoke run."""

    kind: str
    device: str
    tiny: bool  # SYNNAV_TEST_TINY_BACKBONES: the built-in backbones' tiny architectures
    gpu_check: tuple[str, ...]  # gpu_check.py's arguments
    proteins: tuple[int, int, int]  # train, dev, test
    median_length: int
    max_length: int  # of the training proteins (the model keeps train's default, 1,800)
    long_length: int  # the protein predict --explain attributes
    explain_steps: int
    epochs: int
    stop_after_steps: int  # SIGTERM once this many optimiser steps are taken
    budget_s: float  # the whole run, install included
    limits: dict = field(default_factory=dict)  # seconds per step


GPU = Profile(
    kind="full", device="cuda", tiny=False, gpu_check=("--budget-s", "140"),
    proteins=(48, 12, 12), median_length=350, max_length=1000, long_length=1500,
    explain_steps=32, epochs=1, stop_after_steps=2, budget_s=360.0,
    limits={"install": 60, "environment": 60, "gpu_check": 185, "weights": 120,
            "train_interrupted": 120, "train_resume": 120, "predict_explain": 90,
            "train_esm2": 75, "torchrun_train": 90},
)  # fmt: skip
SMOKE = Profile(
    kind="smoke", device="cpu", tiny=True, gpu_check=("--smoke",),
    proteins=(24, 6, 6), median_length=60, max_length=150, long_length=300,
    explain_steps=4, epochs=1, stop_after_steps=1, budget_s=270.0,
    limits={"install": 60, "environment": 60, "gpu_check": 150, "weights": 60,
            "train_interrupted": 60, "train_resume": 60, "predict_explain": 60,
            "train_esm2": 60, "torchrun_train": 120},
)  # fmt: skip
STEPS = (
    "install",
    "environment",
    "gpu_check",
    "weights",
    "train_interrupted",
    "train_resume",
    "predict_explain",
    "train_esm2",
    "torchrun_train",
)


class StepFailed(Exception):
    """A step ran but did not show what it should; the message says what."""


class StepSkipped(Exception):
    pass


@dataclass
class Launch:
    """One finished (or stopped) subprocess."""

    command: list[str]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool
    probes: list[dict]

    def record(self) -> dict:
        out: dict = {
            "command": " ".join(_short_path(c) for c in self.command),
            "exit_code": self.returncode,
            "seconds": round(self.seconds, 2),
            "stderr_tail": self.stderr[-TAIL:],
        }
        if self.probes:
            out["processes"] = self.probes
            peaks = [
                p["peak_gpu_allocated_bytes"]
                for p in self.probes
                if "peak_gpu_allocated_bytes" in p
            ]
            if peaks:
                out["peak_gpu_allocated_bytes"] = max(peaks)
                out["peak_gpu_reserved_bytes"] = max(
                    p["peak_gpu_reserved_bytes"]
                    for p in self.probes
                    if "peak_gpu_reserved_bytes" in p
                )
        return out


def _short_path(text: str) -> str:
    return text.replace(str(ROOT) + os.sep, "")


class Check:
    def __init__(self, profile: Profile, args) -> None:
        self.profile, self.args = profile, args
        self.out: Path = args.out
        self.work: Path = args.work
        self.site = self.work / "site"
        self.hub = self.work / "cache" / "hub"
        self.data = self.work / "data.json"
        self.long_fasta = self.work / "long.fasta"
        self.model = self.work / "models" / "esmc"
        self.stem = (
            f"{dt.date.today().isoformat()}-{'cpu-smoke' if profile.kind == 'smoke' else 'gpu'}"
        )
        self.deadline = time.monotonic() + (args.budget_s or profile.budget_s)
        self.results: dict = {"kind": profile.kind, "started": _now(), "steps": {}}
        self._step_start = self._step_limit = 0.0
        self._launches = 0

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def results_path(self) -> Path:
        return self.out / f"{self.stem}-device-check.json"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        paths = [str(self.site), str(ROOT / "src"), str(ROOT / "tests")]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env.update(
            PYTHONPATH=os.pathsep.join(paths),
            PYTHONUNBUFFERED="1",
            SYNNAV_CACHE_DIR=str(self.work / "cache"),
            SYNNAV_DATA_DIR=str(self.work / "synnav-data"),
            SYNNAV_OFFLINE="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            HF_HOME=str(self.work / "hf-home"),
        )
        env.pop("HF_TOKEN", None)
        if self.profile.tiny:
            env["SYNNAV_TEST_TINY_BACKBONES"] = "1"
        else:
            env.pop("SYNNAV_TEST_TINY_BACKBONES", None)
        env.update(extra)
        return env

    def launch(
        self,
        command: list[str],
        *,
        probe: str | None = None,
        env: dict | None = None,
        stop_after_steps: int | None = None,
    ) -> Launch:
        """Run ``command`` in its own process group within the step's time left; with ``probe``
        (a folder name), collect probe.py's records; with ``stop_after_steps``, send SIGTERM once
        the process has taken that many optimiser steps."""
        env = dict(env or self.env())
        probe_dir = None
        if probe:
            probe_dir = self.work / "probes" / probe
            shutil.rmtree(probe_dir, ignore_errors=True)
            env["SYNNAV_PROBE_DIR"] = str(probe_dir)
        limit = max(1.0, self._step_limit - (time.monotonic() - self._step_start))
        started = time.monotonic()
        # Output goes to files, not pipes: nothing can block on a full pipe while this waits.
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._launches += 1
        out_file, err_file = (logs / f"{self._launches}.{kind}" for kind in ("out", "err"))
        with out_file.open("w") as stdout, err_file.open("w") as stderr:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        timed_out = False
        if stop_after_steps is not None and probe_dir is not None:
            steps_file = probe_dir / "steps-0"
            while process.poll() is None and time.monotonic() - started < limit:
                if steps_file.exists() and int(steps_file.read_text() or 0) >= stop_after_steps:
                    process.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.02)
        try:
            process.wait(timeout=max(1.0, limit - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        stdout = out_file.read_text(errors="replace")
        stderr = err_file.read_text(errors="replace")
        probes = []
        if probe_dir is not None and probe_dir.exists():
            probes = [json.loads(p.read_text()) for p in sorted(probe_dir.glob("probe-*.json"))]
        return Launch(
            command,
            process.returncode,
            stdout,
            stderr,
            time.monotonic() - started,
            timed_out,
            probes,
        )

    def synnav(self, args: list[str], probe: str, **options) -> Launch:
        return self.launch([sys.executable, str(PROBE), *args], probe=probe, **options)

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1) + "\n")
        tmp.replace(self.results_path)

    def run(self) -> int:
        wanted = [s for s in STEPS if not self.args.only or s in self.args.only.split(",")]
        print(
            f"device check ({self.profile.kind}): steps {', '.join(wanted)}; results in {self.out}",
            file=sys.stderr,
            flush=True,
        )
        if self.work.exists() and not self.args.keep_work:
            shutil.rmtree(self.work)
        self.model.parent.mkdir(parents=True, exist_ok=True)  # train --out's folder must exist
        for name in wanted:
            limit = self.profile.limits[name]
            left = self.deadline - time.monotonic()
            record: dict = {"limit_s": limit}
            self._step_start, self._step_limit = time.monotonic(), min(limit, left)
            if left < min(limit, 15):
                record.update(status="skipped", error="the overall budget is spent")
            else:
                try:
                    record.update(getattr(self, name)())
                    record["status"] = "ok"
                except (StepSkipped, StepFailed, TimeoutError) as why:
                    status = {StepSkipped: "skipped", StepFailed: "failed"}.get(
                        type(why), "timeout"
                    )
                    record.update(getattr(why, "record", {}), status=status, error=str(why))
                except Exception as error:  # noqa: BLE001 - recorded; the next step still runs
                    record.update(
                        status="failed",
                        error=f"{type(error).__name__}: {error}",
                        traceback=traceback.format_exc(limit=4)[-TAIL:],
                    )
            record = {"status": record.pop("status"), **record}
            record["seconds_total"] = round(time.monotonic() - self._step_start, 2)
            self.results["steps"][name] = record
            self.results["finished"] = _now()
            self.write()
            print(
                f"  {name:18s} {record['status']:8s} {record['seconds_total']:7.1f} s"
                f"{'  ' + record.get('error', '')[:300] if record.get('error') else ''}",
                file=sys.stderr,
                flush=True,
            )
        if not self.args.keep_work:
            shutil.rmtree(self.work, ignore_errors=True)
        bad = [n for n, r in self.results["steps"].items() if r["status"] not in ("ok", "skipped")]
        print(
            f"device check: {len(self.results['steps']) - len(bad)} of "
            f"{len(self.results['steps'])} steps ok or skipped; {self.results_path}",
            file=sys.stderr,
            flush=True,
        )
        return 1 if bad else 0

    def _checked(self, launch: Launch, what: str) -> dict:
        """``launch``'s record; StepFailed (or TimeoutError) unless it exited 0."""
        record = launch.record()
        if launch.timed_out:
            raise _with(TimeoutError(f"{what} ran past the step's time limit"), record)
        if launch.returncode != 0:
            raise _with(
                StepFailed(f"{what} exited {launch.returncode}: {_last_line(launch.stderr)}"),
                record,
            )
        return record

    # --- steps --------------------------------------------------------------------------------

    def install(self) -> dict:
        """Install, offline, every carried wheel whose distribution is not installed here."""
        folder = self.args.wheels
        wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
        out: dict = {"wheels_folder": _short_path(str(folder)), "wheels": [w.name for w in wheels]}
        missing = [w for w in wheels if not _installed(_wheel_distribution(w))]
        out["already_installed"] = {
            _wheel_distribution(w): _installed(_wheel_distribution(w))
            for w in wheels
            if w not in missing
        }
        out["installed"] = [w.name for w in missing]
        if missing:
            self.site.mkdir(parents=True, exist_ok=True)
            command = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-index",
                "--no-deps",
                "--no-compile",
                "--no-cache-dir",
                "--target",
                str(self.site),
                *map(str, missing),
            ]
            out.update(self._checked(self.launch(command), "pip install"))
        dependencies = _dependencies()
        out["still_missing"] = [d for d in dependencies if not _installed(d, [str(self.site)])]
        if not wheels:
            raise StepSkipped(
                f"no wheels in {folder} (fetch_wheels.sh makes them); "
                f"missing here: {', '.join(out['still_missing']) or 'nothing'}"
            )
        if out["still_missing"]:
            raise _with(
                StepFailed("still missing after the install: " + ", ".join(out["still_missing"])),
                out,
            )
        return out

    def environment(self) -> dict:
        """Versions, the device, and every synnav dependency imported (what a run needs)."""
        modules = [IMPORT_NAMES.get(d, d) for d in _dependencies()]
        code = f"""
import importlib, json, platform, sys
import torch
info = {{"python": platform.python_version(), "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "imports": {{}}}}
for name in {modules!r}:
    try:
        module = importlib.import_module(name)
        info["imports"][name] = getattr(module, "__version__", "ok")
    except Exception as error:
        info["imports"][name] = "failed: " + type(error).__name__ + ": " + str(error)[:200]
if torch.cuda.is_available():
    from synnav_cli.runtime.hardware import cuda_has_native_bf16
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpus=torch.cuda.device_count(), gpu_memory_bytes=p.total_memory,
                capability=f"{{p.major}}.{{p.minor}}",
                bf16_supported=torch.cuda.is_bf16_supported(),
                bf16_native=cuda_has_native_bf16())
from synnav_cli.plugins import get_backbone
info["esmc600m"] = type(get_backbone("esmc600m")).__name__
print(json.dumps(info))
"""
        launch = self.launch([sys.executable, "-c", code])
        record = self._checked(launch, "the environment probe")
        record.pop("stderr_tail", None)
        info = json.loads(launch.stdout.strip().splitlines()[-1])
        record.update(info)
        if shutil.which("nvidia-smi"):
            smi = self.launch(
                [
                    "nvidia-smi",
                    "--query-gpu=name,memory.total,compute_mode,driver_version",
                    "--format=csv,noheader",
                ]
            )
            record["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[-300:]
        record["git_commit"] = _git_commit()
        if info.get("gpu"):
            slug = re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
            self.results_path.unlink(missing_ok=True)  # written under the provisional name
            self.stem = f"{dt.date.today().isoformat()}-{slug}"
            self.results["device"] = info["gpu"]
        self.results["environment"] = {
            k: record[k] for k in ("python", "torch", "cuda", "git_commit")
        }
        failed = {k: v for k, v in info["imports"].items() if str(v).startswith("failed")}
        if self.profile.device == "cuda" and not info["cuda_available"]:
            raise _with(StepFailed("torch sees no CUDA device"), record)
        if failed:
            raise _with(StepFailed(f"imports failed: {failed}"), record)
        return record

    def gpu_check(self) -> dict:
        path = self.out / f"{self.stem}-gpu-check.json"
        launch = self.launch(
            [sys.executable, "benchmarks/gpu_check.py", "--out", str(path), *self.profile.gpu_check]
        )
        record = launch.record()
        record["results_file"] = path.name
        sections = {}
        if path.exists():
            sections = {
                k: v.get("status") for k, v in json.loads(path.read_text())["sections"].items()
            }
        record["sections"] = sections
        bad = {k: v for k, v in sections.items() if v not in ("ok", "skipped")}
        if launch.timed_out:
            raise _with(TimeoutError("gpu_check ran past its time limit"), record)
        if launch.returncode != 0 or bad or not sections:
            raise _with(
                StepFailed(f"gpu_check exited {launch.returncode}; sections not ok: {bad}"), record
            )
        return record

    def weights(self) -> dict:
        """Random weights where the backbones look, and the data the CLI steps train on."""
        self._write_data()
        # ESM C weights are drawn on the GPU where there is one: seconds faster at 600M.
        code = (
            f"DEVICE = {self.profile.device!r}\n"
            + """
import json, time
from hub_weights import cache_random_weights
from synnav_cli.plugins import get_backbone
out = {}
for name in ("esmc600m", "esm2_8m"):
    start = time.monotonic()
    snapshot = cache_random_weights(name, seed=0, device=DEVICE)
    size = sum(p.stat().st_size for p in snapshot.rglob("*") if p.is_file())
    out[name] = {"seconds": round(time.monotonic() - start, 2), "bytes": size,
                 "repo": get_backbone(name).weights_repo}
print(json.dumps(out))
"""
        )
        launch = self.launch([sys.executable, "-c", code])
        record = self._checked(launch, "making the weights")
        record.pop("stderr_tail", None)
        record["backbones"] = json.loads(launch.stdout.strip().splitlines()[-1])
        record["data"] = {
            "proteins": dict(zip(("train", "dev", "test"), self.profile.proteins)),
            "long_protein_residues": self.profile.long_length,
        }
        return record

    def _write_data(self) -> None:
        rng = random.Random(0)
        p = self.profile
        records = []
        for split, count in zip(("train", "dev", "test"), p.proteins):
            for _ in range(count):
                length = int(
                    min(p.max_length, max(30, rng.lognormvariate(0, 0.6) * p.median_length))
                )
                sequence = "M" + "".join(rng.choices(RESIDUES, k=length - 1))
                labels = {}
                for j, name in enumerate(LABELS):
                    draw = rng.random()
                    # Some unknown labels, and a signal to learn (residue content).
                    labels[name] = (
                        None if draw < 0.1 else int(sequence.count(RESIDUES[j]) > length / 20)
                    )
                records.append(
                    {
                        "entry": f"P{len(records):05d}",
                        "sequence": sequence,
                        "labels": labels,
                        "split": split,
                    }
                )
        self.data.write_text(json.dumps(records))
        long = "M" + "".join(rng.choices(RESIDUES, k=p.long_length - 1))
        self.long_fasta.write_text(f">long_protein\n{long}\n")

    def _train_args(self, backbone: str, out: Path, epochs: int) -> list[str]:
        return [
            "train",
            "--backbone",
            backbone,
            "--data",
            str(self.data),
            "--out",
            str(out),
            "--epochs",
            str(epochs),
            "--batch-size",
            "8",
            "--seed",
            "0",
            "--device",
            self.profile.device,
            "-v",
        ]

    @property
    def partial(self) -> Path:
        return self.model.with_name(self.model.name + ".partial")

    def train_interrupted(self) -> dict:
        launch = self.synnav(
            self._train_args("esmc600m", self.model, self.profile.epochs),
            "train_interrupted",
            stop_after_steps=self.profile.stop_after_steps,
        )
        record = launch.record()
        record["checkpoint"] = (
            sorted(p.name for p in self.partial.iterdir()) if self.partial.is_dir() else []
        )
        if launch.timed_out:
            raise _with(TimeoutError("train ran past the step's time limit"), record)
        problems = []
        if launch.returncode == 0 or self.model.exists():
            problems.append(f"it finished (exit {launch.returncode}) before the SIGTERM landed")
        if "training stopped" not in launch.stderr:
            problems.append(
                f"no 'training stopped' line "
                f"(exit {launch.returncode}: {_last_line(launch.stderr)})"
            )
        if "checkpoint.json" not in record["checkpoint"]:
            problems.append(f"no checkpoint in {self.partial.name}")
        if problems:
            raise _with(StepFailed("; ".join(problems)), record)
        record["stopped"] = _last_line(launch.stderr)
        return record

    def train_resume(self) -> dict:
        if not (self.partial / "checkpoint.json").exists():
            raise StepSkipped("no interrupted run to resume")
        launch = self.synnav(
            ["train", "--resume", str(self.partial), "--device", self.profile.device, "-v"],
            "train_resume",
        )
        record = self._checked(launch, "train --resume")
        meta = json.loads((self.model / "synnav-model.json").read_text())
        record["history_epochs"] = len(meta.get("history", []))
        record["best_epoch"] = meta.get("best_epoch")
        record["test_metrics"] = {
            k: v for k, v in (meta.get("metrics") or {}).items() if not isinstance(v, (dict, list))
        }
        if record["history_epochs"] != self.profile.epochs:
            raise _with(
                StepFailed(
                    f"the model's history has {record['history_epochs']} epochs, "
                    f"not {self.profile.epochs}"
                ),
                record,
            )
        if self.partial.exists():
            raise _with(
                StepFailed(f"{self.partial.name} is still there after the model was saved"), record
            )
        return record

    def predict_explain(self) -> dict:
        if not (self.model / "synnav-model.json").exists():
            raise StepSkipped("no trained model")
        explain, table = self.work / "explain", self.work / "long.tsv"
        launch = self.synnav(
            [
                "predict",
                str(self.long_fasta),
                "--model",
                str(self.model),
                "--out",
                str(table),
                "--explain",
                str(explain),
                "--explain-steps",
                str(self.profile.explain_steps),
                "--device",
                self.profile.device,
                "-v",
            ],
            "predict_explain",
        )
        record = self._checked(launch, "predict --explain")
        rows = table.read_text().splitlines()
        record["prediction"] = (
            dict(zip(rows[0].split("\t"), rows[1].split("\t"))) if len(rows) > 1 else None
        )
        files = sorted(p.name for p in explain.iterdir()) if explain.is_dir() else []
        record["explain_files"] = files
        attributions = explain / "long_protein.tsv"
        record["attribution_rows"] = (
            len(attributions.read_text().splitlines()) - 1 if attributions.exists() else 0
        )
        if record["attribution_rows"] != self.profile.long_length:
            raise _with(
                StepFailed(
                    f"{record['attribution_rows']} attribution rows for a "
                    f"{self.profile.long_length}-residue protein ({files})"
                ),
                record,
            )
        if not any(f.endswith(".png") for f in files):
            raise _with(StepFailed(f"no attribution track (.png) among {files}"), record)
        return record

    def train_esm2(self) -> dict:
        out = self.work / "models" / "esm2"
        launch = self.synnav(self._train_args("esm2_8m", out, 1), "train_esm2")
        record = self._checked(launch, "train --backbone esm2_8m")
        record["model_files"] = sorted(p.name for p in out.iterdir())
        return record

    def torchrun_train(self) -> dict:
        record: dict = {}
        if self.profile.device == "cuda":
            smi = self.results["steps"].get("environment", {}).get("nvidia_smi", "")
            record["nvidia_smi"] = smi
            if "exclusive" in smi.lower():
                raise _with(
                    StepSkipped(f"the GPU's compute mode lets one process at a time: {smi}"), record
                )
        out = self.work / "models" / "torchrun"
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(PROBE),
            *self._train_args("esmc600m", out, 1),
        ]
        env = self.env(OMP_NUM_THREADS="1") if self.profile.device == "cpu" else self.env()
        launch = self.launch(command, probe="torchrun_train", env=env)
        record.update(self._checked(launch, "torchrun train (2 processes)"))
        if not (out / "synnav-model.json").exists():
            raise _with(StepFailed("torchrun exited 0 but wrote no model"), record)
        record["ranks_reporting"] = len(launch.probes)
        return record


# --- helpers ----------------------------------------------------------------------------------


def _with(error: Exception, record: dict) -> Exception:
    """``error``, carrying ``record`` into the step's results (see Check.run)."""
    error.record = record  # type: ignore[attr-defined]
    return error


def _git_commit() -> str | None:
    """HEAD of this checkout; where the copy has no git (a device machine's), $SYNNAV_GIT_COMMIT."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        found = ""
    return found or os.environ.get("SYNNAV_GIT_COMMIT") or None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-400:] if lines else ""


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_distribution(wheel: Path) -> str:
    return _normal(wheel.name.split("-")[0])


def _installed(distribution: str, extra_paths: list[str] | None = None) -> str | None:
    """The installed version of ``distribution``, looking in ``extra_paths`` too; None if absent."""
    paths = [*(extra_paths or []), *sys.path]
    for found in importlib.metadata.distributions(path=paths):
        if _normal(found.metadata["Name"] or "") == _normal(distribution):
            return found.version
    return None


def _dependencies() -> list[str]:
    """synnav's runtime dependencies (pyproject.toml) and the extras the steps use."""
    # Read as text: tomllib is Python 3.11+, and synnav allows 3.10.
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.DOTALL | re.MULTILINE).group(1)
    specs = re.findall(r'^\s*"([^"]+)"', block, re.MULTILINE)
    names = [re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0] for spec in specs]
    return [*names, *EXTRA_DEPENDENCIES]


def markdown(results: dict) -> str:
    """The summary table of a results file, for docs/benchmarks.md."""
    env = results.get("environment", {})
    head = (
        f"{results['kind']} run, {results['started']}: {results.get('device', 'CPU')}, "
        f"torch {env.get('torch', '-')} (CUDA {env.get('cuda') or '-'}), "
        f"commit {str(env.get('git_commit') or '-')[:10]}"
    )
    lines = [
        head,
        "",
        "| step | status | seconds | peak GPU memory | note |",
        "|---|---|---|---|---|",
    ]
    for name, record in results["steps"].items():
        peak = record.get("peak_gpu_allocated_bytes")
        memory = f"{peak / 2**30:.1f} GiB" if peak else "-"
        note = record.get("error") or _note(name, record)
        note = note.replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(
            f"| {name} | {record['status']} | {record['seconds_total']:.0f} | {memory} | {note} |"
        )
    return "\n".join(lines)


def _note(name: str, record: dict) -> str:
    if name == "install":
        return f"installed {', '.join(record.get('installed', [])) or 'nothing'}"
    if name == "gpu_check":
        return f"{record.get('results_file')}: " + ", ".join(
            f"{k} {v}" for k, v in record.get("sections", {}).items()
        )
    if name == "train_interrupted":
        return record.get("stopped", "")
    if name == "train_resume":
        return f"{record.get('history_epochs')} epochs, best {record.get('best_epoch')}"
    if name == "predict_explain":
        return f"{record.get('attribution_rows')} residues attributed"
    if name == "torchrun_train":
        return f"{record.get('ranks_reporting')} ranks"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny backbones on CPU (CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(os.environ.get("OUT") or ROOT / "device-check-out"),
        help="results folder (default: $OUT, else ./device-check-out)",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("TMPDIR", "/tmp")) / "synnav-device-check",
        help="scratch folder: weights, checkpoints, models (removed at the end)",
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        default=ROOT / ".device-wheels",
        help="carried wheels (fetch_wheels.sh)",
    )
    parser.add_argument("--only", help="comma-separated steps: " + ", ".join(STEPS))
    parser.add_argument(
        "--budget-s",
        type=float,
        help="seconds for every step together "
        f"(default: {GPU.budget_s:.0f}; --smoke {SMOKE.budget_s:.0f})",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--markdown",
        type=Path,
        metavar="RESULTS",
        help="print the summary table of a results file and exit",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    return Check(SMOKE if args.smoke else GPU, args).run()


if __name__ == "__main__":
    sys.exit(main())
