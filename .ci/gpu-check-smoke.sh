#!/usr/bin/env bash
# benchmarks/gpu_check.py --smoke: every section of the prepared GPU measurement, run on CPU with
# tiny models, so that the script is known to work when a GPU is lent. Any section that does not
# finish "ok" (or "skipped", for CUDA-only measurements) fails this step, and the summary table
# must render from the results file.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${TMPDIR:-/tmp}/synnav-gpu-check-smoke.json"
start=$(date +%s)
PYTHONPATH=src python benchmarks/gpu_check.py --smoke --out "$out" >/dev/null
python - "$out" <<'PY'
import json, sys
sections = json.load(open(sys.argv[1]))["sections"]
bad = {k: v for k, v in sections.items() if v["status"] not in ("ok", "skipped")}
assert len(sections) == 10 and not bad, f"gpu_check --smoke: {bad or sorted(sections)}"
print(f"gpu_check --smoke: {len(sections)} sections ok")
PY
PYTHONPATH=src python benchmarks/gpu_check.py --markdown "$out" >/dev/null
echo "gpu_check smoke done in $(( $(date +%s) - start )) s"
