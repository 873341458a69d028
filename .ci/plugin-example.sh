#!/usr/bin/env bash
# Install the example backbone plugin into the current environment and run its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet --no-deps --no-build-isolation -e plugins/synnav-example-backbone
python -m pytest -q plugins/synnav-example-backbone/tests
