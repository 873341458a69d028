"""The plugin manager: built-in backbone modules plus whatever the ``synnav`` entry points name.

Each entry point is loaded on its own, so one broken distribution costs a line on stderr and
nothing else (pluggy's ``load_setuptools_entrypoints`` would stop at the first failure): any
exception, ``SystemExit`` from ``sys.exit()`` included, except the user's Ctrl-C. An entry point
whose import is still running after :data:`SLOW_PLUGIN_SECONDS` is named on stderr; it cannot be
cut short (Python has no way to stop an import from outside it), only left out with
``SYNNAV_LOAD_PLUGINS``.
``SYNNAV_LOAD_PLUGINS`` (a comma-separated list of entry-point or distribution names; empty for
none) limits which installed plugins load, so a test run or a reproduction sees only those. The
registry of backbones is built once per process and rebuilt only when the set of registered
plugins changes, so a failing plugin is reported once.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import pluggy

from synnav_cli import hookspecs
from synnav_cli.backbones.base import Backbone
from synnav_cli.errors import UserError, did_you_mean, quoted

ENTRY_POINT_GROUP = "synnav"
LOAD_PLUGINS_ENV = "SYNNAV_LOAD_PLUGINS"
DEFAULT_BACKBONE = "esmc600m"
# An installed plugin's import still running after this long is named on stderr, once.
SLOW_PLUGIN_SECONDS = 5.0

# Built-in plugins, registered exactly like installed ones.
DEFAULT_PLUGINS = (
    "synnav_cli.backbones.esmc",
    "synnav_cli.backbones.esm2",
    "synnav_cli.backbones.aacnn",
    "synnav_cli.backbones.aacnn_ensemble",
)

pm = pluggy.PluginManager("synnav")
pm.add_hookspecs(hookspecs)

_loaded = False


def _report(name: str, error: BaseException) -> None:
    print(f'Error loading plugin "{name}": {type(error).__name__}: {error}', file=sys.stderr)


def _slow(name: str) -> None:
    print(
        f'Plugin "{name}" is still loading after {SLOW_PLUGIN_SECONDS:g} s; set '
        f"{LOAD_PLUGINS_ENV} to the plugins you need to leave it out",
        file=sys.stderr,
        flush=True,
    )


def _guarded(name: str, load: Callable[[], object], *, timed: bool = False) -> object:
    """``load()`` (a plugin's import or hook), its failure reported as one line naming ``name``.

    Any exception counts, ``SystemExit`` included (a plugin's ``sys.exit()`` must not end the
    command); Ctrl-C still stops synnav. Returns None when it failed. ``timed``: name the plugin
    on stderr if it is still at it after :data:`SLOW_PLUGIN_SECONDS`.
    """
    timer = threading.Timer(SLOW_PLUGIN_SECONDS, _slow, args=(name,)) if timed else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        return load()
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - a plugin may fail in any way
        _report(name, error)
        return None
    finally:
        if timer is not None:
            timer.cancel()


def load_plugins() -> None:
    """Register the built-ins and every installed entry point, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        module = _guarded(module_name, lambda name=module_name: _import_builtin(name))
        if module is not None:
            pm.register(module, name=module_name)
    allowed = _allowed_plugins()
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        if pm.get_plugin(entry_point.name) is not None or pm.is_blocked(entry_point.name):
            continue
        distribution = entry_point.dist.name if entry_point.dist is not None else None
        if allowed is not None and entry_point.name not in allowed and distribution not in allowed:
            continue
        _guarded(
            entry_point.name,
            lambda point=entry_point: pm.register(point.load(), name=point.name),
            timed=True,
        )
    pm.check_pending()


def _import_builtin(name: str) -> object:
    """A built-in plugin's module, or None when this build leaves it out."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name == name:
            return None
        raise


def _allowed_plugins() -> set[str] | None:
    """The names ``SYNNAV_LOAD_PLUGINS`` allows, or None (unset: every installed plugin)."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


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
            names = [*self.backbones, *(a for aliases in self.aliases.values() for a in aliases)]
            raise UserError(
                f"unknown backbone {quoted(name)}; known backbones: {known}."
                + did_you_mean(name, names)
            )
        return self.backbones[key]


_registry: tuple[tuple[int, ...], Registry] | None = None


def backbone_registry() -> Registry:
    """Every registered backbone, collected once (again only when plugins are added or removed).

    Cheap either way: no weights are touched.
    """
    global _registry
    load_plugins()
    registered = tuple(sorted(id(plugin) for plugin in pm.get_plugins()))
    if _registry is not None and _registry[0] == registered:
        return _registry[1]
    registry = Registry()
    for implementation in pm.hook.register_backbones.get_hookimpls():
        _guarded(
            implementation.plugin_name,
            lambda hook=implementation: hook.function(register=registry.register),
        )
    _registry = (registered, registry)
    return registry


def get_backbone(name: str) -> Backbone:
    return backbone_registry().resolve(name)
