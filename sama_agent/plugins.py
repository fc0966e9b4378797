"""The plugin host: loads `sama_agent` entry points and collects components.

Built-in components are entry points of this distribution and load exactly
like third-party ones. `SAMA_AGENT_PLUGINS` restricts which entry points load:
unset loads all; otherwise a comma-separated list of entry-point or
distribution names (empty loads none).

A plugin that raises on import, whose hook raises, or that registers a
component breaking its protocol is recorded in `Registry.failures` with its
distribution and skipped; everything else keeps working.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import traceback
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .protocols import KINDS, PROTOCOLS, protocol_problems

ENTRY_POINT_GROUP = "sama_agent"
ENV_VAR = "SAMA_AGENT_PLUGINS"
HOOKS = {
    "encoder": "register_encoders",
    "aggregator": "register_aggregators",
    "llm": "register_llms",
    "segmenter": "register_segmenters",
    "tool": "register_tools",
    "command": "register_commands",
}


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class PluginFailure:
    distribution: str
    plugin: str
    error: str

    def __str__(self) -> str:
        return f"plugin '{self.plugin}' from distribution '{self.distribution}' was skipped: {self.error}"


class Registry:
    """Every registered component by kind and name, and the plugins that failed."""

    def __init__(self):
        self.components: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        self.failures: list[PluginFailure] = []
        self.manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.manager.add_hookspecs(hookspecs)
        self._sources: dict[str, tuple[str, str]] = {}  # plugin name -> (distribution, version)

    # ---- loading -----------------------------------------------------------
    def load_entry_points(self, allowed: set[str] | None = None) -> None:
        for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            dist_name = dist.metadata["Name"] if dist else "unknown"
            version = dist.version if dist else "unknown"
            if allowed is not None and entry_point.name not in allowed and dist_name not in allowed:
                continue
            try:
                module = entry_point.load()
            except Exception as exc:  # a broken plugin must not take the host down
                self.failures.append(PluginFailure(dist_name, entry_point.name, f"import failed: {_describe(exc)}"))
                continue
            self.add_plugin(module, entry_point.name, dist_name, version)

    def add_plugin(self, module: Any, name: str, distribution: str, version: str) -> None:
        """Register a plugin module (or object) and collect its components."""
        try:
            self.manager.register(module, name=name)
        except Exception as exc:
            self.failures.append(PluginFailure(distribution, name, f"could not register: {_describe(exc)}"))
            return
        self._sources[name] = (distribution, version)
        for kind, hook_name in HOOKS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                if impl.plugin_name == name:
                    self._collect(kind, impl, name, distribution, version)

    def _collect(self, kind, impl, plugin, distribution, version) -> None:
        found: list[Any] = []
        try:
            impl.function(register=found.append)
        except Exception as exc:
            self.failures.append(PluginFailure(distribution, plugin, f"{HOOKS[kind]} raised {_describe(exc)}"))
            return
        for obj in found:
            problems = protocol_problems(kind, obj)
            name = component_name(kind, obj)
            if problems:
                self.failures.append(
                    PluginFailure(distribution, plugin, f"{kind} '{name}' breaks the {kind} protocol: {'; '.join(problems)}")
                )
                continue
            if name in self.components[kind]:
                owner = self.components[kind][name].distribution
                self.failures.append(PluginFailure(distribution, plugin, f"{kind} name '{name}' is already taken by '{owner}'"))
                continue
            self.components[kind][name] = Component(kind, name, obj, plugin, distribution, version)

    # ---- lookup ------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def get(self, kind: str, name: str) -> Component:
        if kind not in self.components:
            raise PluginError(f"unknown component kind '{kind}'; kinds are {', '.join(KINDS)}.")
        try:
            return self.components[kind][name]
        except KeyError:
            available = ", ".join(self.names(kind)) or "none"
            raise PluginError(
                f"no {kind} named '{name}'. Available: {available}. Run `sama-agent plugins` to see what is installed."
            ) from None

    def create(self, kind: str, name: str, **options) -> Any:
        """Build a component and check the instance against its protocol."""
        component = self.get(kind, name)
        instance = component.obj(**options)
        protocol = PROTOCOLS.get(kind)
        if protocol is not None:
            problems = protocol_problems(kind, instance)
            if problems or not isinstance(instance, protocol):
                raise PluginError(
                    f"{kind} '{name}' from '{component.distribution}' built an object that breaks the {kind} protocol: "
                    f"{'; '.join(problems) or 'missing members'}"
                )
        return instance

    def all(self) -> list[Component]:
        return [c for kind in KINDS for c in sorted(self.components[kind].values(), key=lambda c: c.name)]


def component_name(kind: str, obj: Any) -> str:
    return getattr(obj, "name", None) or getattr(obj, "__name__", None) or repr(obj)


def allowed_from_env() -> set[str] | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, loaded from entry points on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        registry = Registry()
        registry.load_entry_points(allowed_from_env())
        _REGISTRY = registry
    return _REGISTRY


def _describe(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {frame[0].filename}:{frame[0].lineno})" if frame else ""
    return f"{exc.__class__.__name__}: {exc}{where}"
