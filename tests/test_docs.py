"""The documentation stays true: the CLI reference matches --help, options show defaults, hooks are documented."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import click

from synnav_cli import hookspecs
from synnav_cli.backbones.base import Backbone
from synnav_cli.cli.main import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _commands(command: click.Command, path: str = "synnav"):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_cli_reference_is_current():
    generator = _generator()
    current = (DOCS / "cli.md").read_text(encoding="utf-8") if (DOCS / "cli.md").exists() else ""
    assert current == generator.render(), (
        f"docs/cli.md does not match `synnav --help`; regenerate it with `{generator.REGENERATE}`"
    )


def test_every_option_has_help_that_shows_its_default():
    missing = []
    for path, command in _commands(cli):
        for param in command.params:
            if not isinstance(param, click.Option) or param.name in {"help", "version"}:
                continue
            text = param.help or ""
            if not text or not (param.show_default or "[default" in text):
                missing.append(f"{path} {param.opts[-1]}")
    assert not missing, f"options without help or a shown default: {', '.join(missing)}"


def test_every_hook_is_documented():
    plugins_doc = (DOCS / "plugins.md").read_text(encoding="utf-8")
    hooks = [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction)]
    assert hooks
    for hook in hooks:
        assert f"{hook}(" in plugins_doc, f"hook {hook} is not documented in docs/plugins.md"


def test_backbone_interface_is_documented():
    plugins_doc = (DOCS / "plugins.md").read_text(encoding="utf-8")
    public = [name for name in vars(Backbone) if not name.startswith("_")]
    public += list(Backbone.__annotations__)
    for name in public:
        assert f"`{name}" in plugins_doc, f"Backbone.{name} is not documented in docs/plugins.md"


def test_the_files_the_readme_commands_write_are_ignored_by_git():
    """Running the README's main job in a checkout leaves `git status` clean."""
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    written = set(re.findall(r"^synnav [^\n#]*> (\S+)", readme, flags=re.MULTILINE))
    assert "out.tsv" in written
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert not [name for name in written if f"/{name}" not in ignored and name not in ignored]
