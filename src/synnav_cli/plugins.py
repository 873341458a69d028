"""The plugin manager: built-in backbone modules plus whatever the ``synnav`` entry points name.

Each entry point is loaded on its own, so one broken distribution costs a line on stderr and
nothing else (pluggy's ``load_setuptools_entrypoints`` would stop at the first failure).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from synnav_cli import hookspecs
from synnav_cli.backbones.base import Backbone
from synnav_cli.errors import UserError

ENTRY_POINT_GROUP = "synnav"
DEFAULT_BACKBONE = "esmc600m"

# Built-in plugins, registered exactly like installed ones.
DEFAULT_PLUGINS = (
    "synnav_cli.backbones.esmc",
    "synnav_cli.backbones.esm2",
    "synnav_cli.backbones.aacnn",
)

pm = pluggy.PluginManager("synnav")
pm.add_hookspecs(hookspecs)

_loaded = False


def _report(name: str, error: BaseException) -> None:
    print(f'Error loading plugin "{name}": {type(error).__name__}: {error}', file=sys.stderr)


def load_plugins() -> None:
    """Register the built-ins and every installed entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name == module_name:  # a built-in not present in this build
                continue
            _report(module_name, error)
            continue
        except Exception as error:  # noqa: BLE001 - a plugin may fail in any way
            _report(module_name, error)
            continue
        pm.register(module, name=module_name)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(entry_point.name) is not None or pm.is_blocked(entry_point.name):
            continue
        try:
            plugin = entry_point.load()
            pm.register(plugin, name=entry_point.name)
        except Exception as error:  # noqa: BLE001
            _report(entry_point.name, error)
    pm.check_pending()


@dataclass
class Registry:
    """Backbones by id, plus aliases that point at ids."""

    backbones: dict[str, Backbone] = field(default_factory=dict)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    _by_name: dict[str, str] = field(default_factory=dict)

    def register(self, backbone: Backbone, aliases: tuple[str, ...] = ()) -> None:
        if backbone.id in self._by_name:
            raise ValueError(f"backbone name {backbone.id!r} is registered twice")
        self.backbones[backbone.id] = backbone
        self.aliases[backbone.id] = tuple(aliases)
        for name in (backbone.id, *aliases):
            self._by_name[name.lower()] = backbone.id

    def resolve(self, name: str) -> Backbone:
        key = self._by_name.get(name.lower())
        if key is None:
            known = ", ".join(sorted(self.backbones))
            raise UserError(f"unknown backbone {name!r}; known backbones: {known}")
        return self.backbones[key]


def backbone_registry() -> Registry:
    """Collect every registered backbone. Cheap: no weights are touched."""
    load_plugins()
    registry = Registry()
    for implementation in pm.hook.register_backbones.get_hookimpls():
        try:
            implementation.function(register=registry.register)
        except Exception as error:  # noqa: BLE001
            _report(implementation.plugin_name, error)
    return registry


def get_backbone(name: str) -> Backbone:
    return backbone_registry().resolve(name)
