#!/usr/bin/env bash
# The device call's smoke run (benchmarks/device/run.sh --smoke): every step of the prepared GPU
# check on CPU with the tiny backbones — benchmarks/gpu_check.py --smoke, random weights in a hub
# cache, synnav train interrupted by SIGTERM and resumed, predict --explain of a long protein,
# ESM2 training, a 2-process torchrun train — so that the call is known to work when a GPU is
# lent. Any step that does not finish "ok" (or "skipped": the install, without carried wheels)
# fails this, and both results files' tables must render.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/synnav-device-smoke"
rm -rf "$out"
start=$(date +%s)
OUT="$out" bash benchmarks/device/run.sh --smoke >/dev/null 2>&1 || {
    cat "$out/device-check.log" >&2
    exit 1
}
python - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
(check,) = out.glob("*-cpu-smoke-device-check.json")
(gpu,) = out.glob("*-cpu-smoke-gpu-check.json")
steps = json.loads(check.read_text())["steps"]
bad = {k: v["status"] for k, v in steps.items() if v["status"] != "ok" and k != "install"}
assert len(steps) == 9 and not bad, f"device check --smoke: {bad or sorted(steps)}"
sections = json.loads(gpu.read_text())["sections"]
bad = {k: v["status"] for k, v in sections.items() if v["status"] not in ("ok", "skipped")}
assert len(sections) == 10 and not bad, f"gpu_check --smoke: {bad or sorted(sections)}"
print(f"device check --smoke: {len(steps)} steps, gpu_check {len(sections)} sections ok")
PY
PYTHONPATH=src python benchmarks/device/check.py --markdown "$out"/*-device-check.json >/dev/null
PYTHONPATH=src python benchmarks/gpu_check.py --markdown "$out"/*-gpu-check.json >/dev/null
echo "device check smoke done in $(( $(date +%s) - start )) s"
