#!/usr/bin/env bash
# CI: build the wheel with `build`, install it into a fresh venv (no synnav from the checkout in
# sight), and run the main job from outside the repository.
# The fresh venv borrows the dependencies of the active venv (a path in a .pth file: their own
# .pth files, such as an editable synnav, are not processed), so nothing large is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python -m venv "$work/tools"
"$work/tools/bin/pip" install -q build
"$work/tools/bin/python" -m build --wheel --outdir "$work/dist" "$repo" > "$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; exit 1; }
wheel=$(ls "$work"/dist/synnav-*.whl)
echo "built $(basename "$wheel")"
python - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
needed = ["synnav_cli/bundled/model/model.safetensors", "synnav_cli/bundled/model/synnav-model.json",
          "synnav_cli/bundled/dataset.json", "synnav_cli/bundled/shift.json"]
missing = [n for n in needed if n not in names]
sys.exit(f"the wheel lacks {missing}" if missing else 0)
PY

python -m venv "$work/venv"
deps=$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
fresh=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$fresh/borrowed-dependencies.pth"
"$work/venv/bin/pip" install -q --no-deps "$wheel"

cd "$work"
export SYNNAV_DATA_DIR="$work/data" SYNNAV_CACHE_DIR="$work/cache" HF_HUB_OFFLINE=1
where=$("$work/venv/bin/python" -c 'import synnav_cli; print(synnav_cli.__file__)')
case "$where" in
    "$fresh"/*) ;;
    *) echo "synnav_cli imported from $where, not from the wheel" >&2; exit 1 ;;
esac
"$work/venv/bin/synnav" predict "$repo/data/example.fasta" > out.tsv
head -1 out.tsv | grep -q "^id"$'\t'"length"$'\t' || { echo "no header:" >&2; head -3 out.tsv >&2; exit 1; }
rows=$(( $(wc -l < out.tsv) - 1 ))
expected=$(grep -c '^>' "$repo/data/example.fasta")
[ "$rows" -eq "$expected" ] || { echo "expected $expected rows, got $rows" >&2; exit 1; }
echo "wheel check done: $rows rows from the installed wheel"
