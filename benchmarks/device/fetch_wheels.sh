#!/usr/bin/env bash
# Download, here (with a network), the wheels the lent GPU machine lacks, for its Python 3.12 on
# manylinux x86_64, into .device-wheels/ (git-ignored; the device call carries it).
#
# That machine has torch, transformers and huggingface_hub, and (per the device tool's package
# list) numpy, scikit-learn, scipy, matplotlib, click, pluggy, tqdm and safetensors, but not
# biopython or platformdirs, which synnav imports at load time. The wheels below are synnav's
# small runtime dependencies: run.sh installs only those whose distribution is missing there, so
# one that turns out to be absent as well still arrives. scikit-learn (with scipy, ~45 MB) and
# matplotlib (~25 MB with its dependencies) are left out: together they would pass the 64 MiB a
# device call may carry; run.sh records which imports are missing, and names them in its results.
#
# Usage: bash benchmarks/device/fetch_wheels.sh [DIR]      (default DIR: .device-wheels)
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${1:-.device-wheels}"
limit_mib=16  # far below the 64 MiB a device call carries in all (the working tree counts too)

# One version of each, so that the offline install never has to choose.
wheels=(
    "biopython==1.88"
    "platformdirs==4.14.9"
    "pluggy==1.7.0"
    "click==8.5.1"
    "tqdm==4.70.1"
    "safetensors==0.8.0"
)
mkdir -p "$dir"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any -d "$dir" "${wheels[@]}"

# A wheel left from an earlier pin would make two versions of one distribution.
python3 - "$dir" "${wheels[@]}" <<'PY'
import re, sys
from pathlib import Path
folder, pins = Path(sys.argv[1]), sys.argv[2:]
norm = lambda name: re.sub(r"[-_.]+", "_", name).lower()
wanted = {norm(p.split("==")[0]): p.split("==")[1] for p in pins}
for wheel in sorted(folder.glob("*.whl")):
    name, version = wheel.name.split("-")[:2]
    if wanted.get(norm(name)) != version:
        print(f"removing {wheel.name}: not pinned in fetch_wheels.sh", file=sys.stderr)
        wheel.unlink()
PY

bytes=$(du -sb "$dir" | cut -f1)
ls -l "$dir"
echo "$dir: $(ls "$dir"/*.whl | wc -l) wheels, $((bytes / 1024)) KiB"
if [ "$bytes" -gt $((limit_mib * 1024 * 1024)) ]; then
    echo "$dir is over ${limit_mib} MiB: the device call carries 64 MiB at most, tree included" >&2
    exit 1
fi
