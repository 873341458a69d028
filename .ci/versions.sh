#!/usr/bin/env bash
# CI: the tests that exercise transformers, huggingface_hub and pandas, in a venv of their own
# (.ci-venvs/versions, git-ignored) with the lent GPU machine's transformers 5.17 and
# huggingface_hub 1.33 and the pandas extra's floor, so version drift shows on the CPU before a
# GPU is lent. The files listed below are those that call the three directly; the rest of the
# suite reaches them, if at all, through the same code paths, and already ran in the main job
# (the whole fast suite here took 657 s, more than the main job). These versions are also
# pyproject.toml's floors, and torch 2.13 is its torch floor: this step and the main job together prove what pyproject declares.
# The GPU machine's torch is 2.11, but the registry's 2.11 (like every PyPI Linux x86_64 torch) is a
# CUDA build, a 531 MB wheel plus several GB of CUDA libraries; the only CPU build within reach is
# 2.13.0+cpu, so torch 2.11 itself is exercised by the device call, not here.
# Everything is pinned in one pip command, torch as 2.13.0+cpu (the local file: never a multi-GB
# CUDA download). The versions are checked after install; any pytest failure, exit 5 (no tests
# collected) or 4 (a listed file missing) included, fails the step.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# pandas 2.2.3: the floor of the pandas extra (the Python API's DataFrame; docs/python.md).
pins=(torch==2.13.0+cpu transformers==5.17.0 huggingface_hub==1.33.0 pandas==2.2.3)
start=$(date +%s)
venv="$root/.ci-venvs/versions"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${pins[@]}" -e ".[test]"
echo "versions venv installed in $(( $(date +%s) - start ))s"
# The installed versions are the pinned ones, and torch is a CPU build.
"$venv/bin/python" - "${pins[@]}" <<'PY'
import sys
from importlib.metadata import version

import torch

wrong = []
for pin in sys.argv[1:]:
    package, wanted = pin.split("==")
    got = version(package)
    if got != wanted:
        wrong.append(f"{package} {got} (pinned {wanted})")
if torch.version.cuda is not None:
    wrong.append(f"torch is a CUDA {torch.version.cuda} build")
print(f"python {sys.version.split()[0]}, " + ", ".join(sys.argv[1:]))
sys.exit(f"not the pinned versions: {'; '.join(wrong)}" if wrong else 0)
PY
(
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
    # ESM2 (transformers' EsmModel and tokenizer files), hub downloads and the cache, model
    # sharing through the Hub, the Python API's DataFrames, and the import-time checks.
    python -m pytest -q -p no:cacheprovider \
        tests/test_backbones_real.py tests/test_esm2_packed.py tests/test_esm2_inference.py \
        tests/test_cache.py \
        tests/test_hub_reach.py tests/test_model_sharing.py tests/test_api.py \
        tests/test_performance.py tests/test_small_job_imports.py tests/test_plugins.py
)
echo "versions step done in $(( $(date +%s) - start ))s"
