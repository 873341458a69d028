#!/usr/bin/env bash
# Parity of synnav's ESM C encoder with EvolutionaryScale's reference implementation.
#
# The reference package (`esm`) is too heavy and too fragile to be a dependency of synnav, so it
# lives in a virtual environment of its own, reused between runs:
#   SYNNAV_PARITY_VENV   where that environment goes (default: ${TMPDIR:-/tmp}/synnav-parity-venv)
#   PYTHON               the interpreter that creates it (default: python3; 3.10 or 3.11)
#
# Why the install is split in two: esm 3.2.1.post1 declares torchvision and torchtext, which it
# never imports on the ESM C path and which fail to import beside a CPU build of torch, and
# asking for them lets pip replace torch with a multi-GB CUDA build. So every third-party package
# is resolved in ONE pip command with torch pinned (the only resolve, hence one consistent set),
# and then esm and synnav themselves are added with --no-deps. The list below is esm's declared
# requirements minus torchvision, torchtext and ipython (used only by its notebook widgets),
# plus httpx, which esm imports without declaring it. transformers <4.48.2 is esm's own cap.
set -euo pipefail

cd "$(dirname "$0")/.."
venv="${SYNNAV_PARITY_VENV:-${TMPDIR:-/tmp}/synnav-parity-venv}"
start=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

"${pip[@]}" install \
    torch==2.13.0 transformers==4.48.1 einops 'biotite>=1.0.0' msgpack-numpy biopython \
    scikit-learn brotli attrs pandas cloudpathlib tenacity zstd httpx pytest
"${pip[@]}" install --no-deps esm==3.2.1.post1 -e .

# Refuse to compare against the wrong thing: a CUDA torch or another release would make the
# figures mean something else.
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
assert torch.version.cuda is None, f"CUDA build of torch pulled in: {torch.__version__}"
assert md.version("esm") == "3.2.1.post1", md.version("esm")
print(f"parity venv: torch {torch.__version__}, esm {md.version('esm')}")
EOF
echo "parity venv ready in $(( $(date +%s) - start )) s"

# --noconftest: synnav is installed without its dependencies here, so the main suite's fixtures
# may not import; the parity test needs none of them.
"$venv/bin/python" -m pytest -q --noconftest -p no:cacheprovider -s tests/parity/test_esmc_parity.py "$@"
echo "parity total $(( $(date +%s) - start )) s"
