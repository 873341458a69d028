"""The wheel that `python -m build --wheel` makes carries the bundled model and dataset.

The build runs on a copy of the source in a temporary directory, so the checkout is untouched.
.ci/wheel.sh goes further: it installs the wheel into a fresh venv and runs `synnav predict`.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _setuptools_version() -> tuple[int, ...]:
    try:
        from importlib.metadata import version

        return tuple(int(part) for part in version("setuptools").split(".")[:2])
    except Exception:
        return (0,)


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="needs the build package")
def test_wheel_contains_the_bundled_model(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "data", source / "data", symlinks=True)
    shutil.copytree(
        ROOT / "src",
        source / "src",
        symlinks=True,  # bundled/dataset.json is a link into data/, as in the repository
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    # Without isolation when a recent setuptools is at hand: no download needed.
    isolation = ["--no-isolation"] if _setuptools_version() >= (77,) else []
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", *isolation, "--outdir", str(tmp_path / "dist")],
        cwd=source,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("synnav-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        for name in ("model.safetensors", "synnav-model.json"):
            shipped = infos[f"synnav_cli/bundled/model/{name}"]
            source_file = ROOT / "src/synnav_cli/bundled/model" / name
            assert shipped.file_size == source_file.stat().st_size
        dataset = infos["synnav_cli/bundled/dataset.json"]  # the file itself, not a link
        assert dataset.file_size == (ROOT / "data/dataset.json").stat().st_size
        assert any(name.endswith("entry_points.txt") for name in infos)
