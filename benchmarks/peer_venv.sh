#!/usr/bin/env bash
# Build (or reuse) the virtual environment that holds EvolutionaryScale's `esm` 3.2.1.post1, the
# peer that benchmarks/peers.py runs beside synnav. Same recipe, and by default the same place,
# as .ci/parity-esmc.sh (read the reasons there): every third-party package resolved in one pip
# command with torch pinned, then esm added with --no-deps, so no CUDA torch, torchvision or
# torchtext is pulled in. synnav itself is not installed here: the peer worker needs only esm.
#   SYNNAV_PARITY_VENV   where the environment goes (default: ${TMPDIR:-/tmp}/synnav-parity-venv)
#   PYTHON               the interpreter that creates it (default: python3; 3.10 or 3.11)
#   TORCH_VERSION        the torch to pin (default: the one in the calling environment, so that
#                        both sides of the comparison run the same kernels)
# Prints the environment's python on the last line of stdout.
set -euo pipefail
venv="${SYNNAV_PARITY_VENV:-${TMPDIR:-/tmp}/synnav-parity-venv}"
torch_version="${TORCH_VERSION:-$(python -c 'import torch; print(torch.__version__.split("+")[0])')}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$torch_version" >/dev/null 2>&1 <<'PY'
import importlib.metadata as md, sys
import torch, esm.models.esmc  # noqa: F401
assert md.version("esm") == "3.2.1.post1" and torch.__version__.split("+")[0] == sys.argv[1]
PY
then
    echo "$venv/bin/python"
    exit 0
fi

[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install \
    "torch==$torch_version" transformers==4.48.1 einops 'biotite>=1.0.0' msgpack-numpy biopython \
    scikit-learn brotli attrs pandas cloudpathlib tenacity zstd httpx pytest >&2
"${pip[@]}" install --no-deps esm==3.2.1.post1 >&2
"$venv/bin/python" -c "import esm.models.esmc, torch; print('peer venv: torch', torch.__version__)" >&2
echo "$venv/bin/python"
