"""The registry: built-ins, third-party entry points, broken plugins, unknown names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from synnav_cli.cli.main import cli
from synnav_cli.errors import UserError
from synnav_cli.plugins import DEFAULT_BACKBONE, get_backbone

TESTS = Path(__file__).parent


def test_backbones_json_lists_builtins_and_one_default(runner):
    result = runner.invoke(cli, ["backbones", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    ids = {row["id"] for row in rows}
    assert {"esmc600m", "esm2_8m", "tiny"} <= ids
    assert [row["id"] for row in rows if row["default"]] == [DEFAULT_BACKBONE] == ["esmc600m"]
    for row in rows:
        assert {"id", "aliases", "embedding_dim", "max_length", "license", "default"} <= set(row)
    esmc = next(row for row in rows if row["id"] == "esmc600m")
    assert esmc["embedding_dim"] == 1152 and "Non-Commercial" in esmc["license"]


def test_backbones_table(runner):
    result = runner.invoke(cli, ["backbones"])
    assert result.exit_code == 0
    assert "esmc600m (default)" in result.output and "esm2_8m" in result.output


def test_aliases_resolve_case_insensitively():
    assert get_backbone("TINY-TEST").id == "tiny"


def test_unknown_backbone_lists_known_ones(runner, small_dataset):
    with pytest.raises(UserError, match="known backbones: .*esmc600m"):
        get_backbone("esm3")
    result = runner.invoke(cli, ["train", "--backbone", "esm3", "--data", str(small_dataset)])
    assert result.exit_code == 1 and "unknown backbone 'esm3'" in result.stderr


def make_distribution(root: Path, name: str, module_source: str, entry_point: str) -> Path:
    """An installed distribution, as pip would leave it: a module and a dist-info with entry points."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[synnav]\n{entry_point}\n")
    return root


THIRD_PARTY = """
    import sys
    sys.path.insert(0, {tests!r})
    from synnav_cli import hookimpl
    from tiny_backbone import TinyBackbone

    class ThirdParty(TinyBackbone):
        id = "thirdparty"
        description = "installed from another distribution"

    @hookimpl
    def register_backbones(register):
        register(ThirdParty(), aliases=("tp",))
"""


def run_synnav(args: list[str], site: Path, tmp_path: Path, stdin: str | None = None,
               load: str = "thirdparty,broken") -> subprocess.CompletedProcess:
    """synnav in a fresh process that sees the distributions in ``site``; ``load`` is what
    SYNNAV_LOAD_PLUGINS allows (None: unset, every installed plugin)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "SYNNAV_DATA_DIR": str(tmp_path / "data"), "SYNNAV_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("SYNNAV_LOAD_PLUGINS", None)
    if load is not None:
        env["SYNNAV_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, "-m", "synnav_cli", *args], capture_output=True, text=True, env=env,
                          input=stdin, timeout=300)


def test_third_party_backbone_trains_and_predicts(tmp_path, small_dataset):
    site = make_distribution(tmp_path / "site", "synnav_thirdparty", THIRD_PARTY.format(tests=str(TESTS)),
                             "thirdparty = synnav_thirdparty")
    listed = run_synnav(["backbones", "--json"], site, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "thirdparty" in {row["id"] for row in json.loads(listed.stdout)}
    out = tmp_path / "model"
    trained = run_synnav(["train", "-b", "tp", "-d", str(small_dataset), "--out", str(out), "--epochs", "1"], site,
                         tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((out / "synnav-model.json").read_text())["backbone"] == "thirdparty"
    predicted = run_synnav(["predict", "-m", str(out), "-"], site, tmp_path, stdin=">p1\nMKVLAAG\n>p2\nMSTNP\n")
    assert predicted.returncode == 0, predicted.stderr
    assert [line.split("\t")[0] for line in predicted.stdout.splitlines()] == ["id", "p1", "p2"]


def test_broken_plugin_costs_one_line(tmp_path):
    site = make_distribution(tmp_path / "site", "synnav_broken", "raise RuntimeError('boom')\n",
                             "broken = synnav_broken")
    make_distribution(site, "synnav_thirdparty", THIRD_PARTY.format(tests=str(TESTS)),
                      "thirdparty = synnav_thirdparty")
    result = run_synnav(["backbones", "--json"], site, tmp_path)
    assert result.returncode == 0
    ids = {row["id"] for row in json.loads(result.stdout)}
    assert {"esmc600m", "esm2_8m", "thirdparty"} <= ids
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == ['Error loading plugin "broken": RuntimeError: boom']


def test_registering_builds_no_model():
    # Registration must stay cheap: listing backbones builds no encoder.
    from tiny_backbone import TinyBackbone

    from synnav_cli.plugins import backbone_registry

    calls = []
    original = TinyBackbone.build_encoder
    TinyBackbone.build_encoder = lambda self, **kw: calls.append(1)
    try:
        backbone_registry()
    finally:
        TinyBackbone.build_encoder = original
    assert calls == []


def test_the_backbone_contract_and_docs_plugins_md_agree():
    """Every public attribute and method of Backbone is documented in docs/plugins.md, and every
    name the doc lists in backticks as part of the interface exists on Backbone."""
    import inspect
    import re

    from synnav_cli.backbones.base import Backbone

    doc = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    interface = doc.split("## The Backbone interface", 1)[1].split("## Testing a plugin", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", interface, flags=re.M))
    documented |= set(re.findall(r"^- `(\w+)\(", interface, flags=re.M))
    contract = {name for name, _ in inspect.getmembers(Backbone) if not name.startswith("_")}
    contract |= {name for name in Backbone.__annotations__ if not name.startswith("_")}
    assert contract - documented == set(), "undocumented in docs/plugins.md"
    assert documented - contract == set(), "documented but not on Backbone"


def test_load_plugins_setting_chooses_which_installed_plugins_load(tmp_path):
    site = make_distribution(tmp_path / "site", "synnav_broken", "raise RuntimeError('boom')\n",
                             "broken = synnav_broken")
    make_distribution(site, "synnav_thirdparty", THIRD_PARTY.format(tests=str(TESTS)),
                      "thirdparty = synnav_thirdparty")

    def listed(load):
        result = run_synnav(["backbones", "--json"], site, tmp_path, load=load)
        assert result.returncode == 0, result.stderr
        return {row["id"] for row in json.loads(result.stdout)}, result.stderr

    ids, stderr = listed("")
    assert "thirdparty" not in ids and "esmc600m" in ids and stderr == ""  # built-ins always load
    ids, stderr = listed("thirdparty")
    assert "thirdparty" in ids and stderr == ""  # the broken one is not even imported
    ids, stderr = listed(None)
    assert "thirdparty" in ids and "boom" in stderr


def test_the_registry_is_built_once_per_process(monkeypatch):
    from synnav_cli import plugins

    calls = []
    original = plugins.Registry.register

    def counting(self, backbone, aliases=()):
        calls.append(backbone.id)
        return original(self, backbone, aliases)

    monkeypatch.setattr(plugins, "_registry", None)
    monkeypatch.setattr(plugins.Registry, "register", counting)
    plugins.get_backbone("tiny")
    first = len(calls)
    plugins.get_backbone("esmc600m")
    plugins.backbone_registry()
    assert first > 0 and len(calls) == first


EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"
EXITS_IN_HOOK = """
    from synnav_cli import hookimpl

    @hookimpl
    def register_backbones(register):
        raise SystemExit("leaving")
"""


def test_a_plugin_that_exits_costs_one_line(tmp_path):
    """sys.exit at import, or SystemExit from the hook, is that plugin's error, not the command's
    exit code: every command went on to exit 3 (or 1) without a word."""
    site = make_distribution(tmp_path / "site", "synnav_exits", EXITS_AT_IMPORT, "exits = synnav_exits")
    make_distribution(site, "synnav_hookexit", EXITS_IN_HOOK, "hookexit = synnav_hookexit")
    make_distribution(site, "synnav_thirdparty", THIRD_PARTY.format(tests=str(TESTS)),
                      "thirdparty = synnav_thirdparty")
    result = run_synnav(["backbones", "--json"], site, tmp_path, load="exits,hookexit,thirdparty")
    assert result.returncode == 0, result.stderr
    assert {"esmc600m", "thirdparty"} <= {row["id"] for row in json.loads(result.stdout)}
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == ['Error loading plugin "exits": SystemExit: 3',
                      'Error loading plugin "hookexit": SystemExit: leaving'], result.stderr


def test_a_slow_plugin_is_named_while_it_loads(tmp_path, monkeypatch, capsys):
    """A plugin that takes long to import is named once while it does; the others load as ever.
    (Python cannot stop an import from outside it, so a hang is named, not cut short.)"""
    import importlib.metadata

    import pluggy

    from synnav_cli import hookspecs, plugins

    (tmp_path / "synnav_sleepy_m5.py").write_text("import time\ntime.sleep(1.0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    manager = pluggy.PluginManager("synnav")
    manager.add_hookspecs(hookspecs)
    monkeypatch.setattr(plugins, "pm", manager)
    monkeypatch.setattr(plugins, "_loaded", False)
    monkeypatch.setattr(plugins, "_registry", None)
    monkeypatch.setattr(plugins, "SLOW_PLUGIN_SECONDS", 0.2)
    sleepy = importlib.metadata.EntryPoint("sleepy", "synnav_sleepy_m5", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins, "entry_points", lambda group: [sleepy])
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "sleepy")
    try:
        plugins.load_plugins()
    finally:
        sys.modules.pop("synnav_sleepy_m5", None)
    assert manager.get_plugin("sleepy") is not None and manager.get_plugin(plugins.DEFAULT_PLUGINS[0])
    lines = capsys.readouterr().err.splitlines()
    slow = 'Plugin "sleepy" is still loading after 0.2 s; set SYNNAV_LOAD_PLUGINS to the plugins'
    assert lines == [f"{slow} you need to leave it out"], lines
