#!/usr/bin/env bash
# torchrun with 2 processes (gloo on CPU) against 1 process: train, predict (file and stdin), embed,
# evaluate and a bad record. Each test bounds its launches; .ci/run bounds the whole step.
set -euo pipefail
cd "$(dirname "$0")/.."
SYNNAV_TEST_DISTRIBUTED=1 python -m pytest -q -p no:cacheprovider tests/test_distributed.py
