#!/usr/bin/env bash
# The device call: `bash benchmarks/device/run.sh` on the lent GPU machine, with carry
# [".device-wheels"] (made here by benchmarks/device/fetch_wheels.sh); `--smoke` runs the same
# steps on CPU with the tiny backbones (CI: .ci/gpu-check-smoke.sh). Results go to $OUT (else
# ./device-check-out): <date>-<device>-device-check.json, <date>-<device>-gpu-check.json and
# device-check.log. Steps and limits: benchmarks/device/check.py; docs/benchmarks.md ("GPU check:
# one device call") has the whole procedure.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-$PWD/device-check-out}"
mkdir -p "$out"
python3 benchmarks/device/check.py --out "$out" "$@" 2>&1 | tee "$out/device-check.log"
