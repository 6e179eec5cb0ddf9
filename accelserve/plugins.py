"""Plugin registry over entry-point groups.

Built-ins register through the same entry-point groups a third party uses (see ``pyproject.toml``). Entry points
are only *listed* at start-up; a plugin is imported when it is used, so a plugin that fails to import breaks only
the command that needs it, with an error naming the plugin and the import error.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from accelserve.errors import PluginError

#: short group name -> entry-point group
GROUPS: dict[str, str] = {
    "exporters": "accelserve.exporters",
    "passes": "accelserve.passes",
    "runtimes": "accelserve.runtimes",
    "reporters": "accelserve.reporters",
}
#: short group name -> what one plugin of the group is called in messages
SINGULAR: dict[str, str] = {"exporters": "exporter", "passes": "pass", "runtimes": "runtime", "reporters": "reporter"}


@dataclass(frozen=True)
class PluginInfo:
    group: str
    name: str
    value: str
    distribution: str | None

    @property
    def builtin(self) -> bool:
        return self.distribution == "accelserve"


def _group(group: str) -> str:
    try:
        return GROUPS[group]
    except KeyError:
        raise PluginError(f"unknown plugin group '{group}'", hint=f"groups: {', '.join(GROUPS)}") from None


def _entry_points(group: str) -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=_group(group)):
        # The first distribution on sys.path wins, like importlib's own lookup.
        found.setdefault(ep.name, ep)
    return found


def list_plugins(group: str | None = None) -> list[PluginInfo]:
    groups = [group] if group else list(GROUPS)
    out = []
    for g in groups:
        for name, ep in sorted(_entry_points(g).items()):
            dist = ep.dist.name if ep.dist is not None else None
            out.append(PluginInfo(group=g, name=name, value=ep.value, distribution=dist))
    return out


def names(group: str) -> list[str]:
    return sorted(_entry_points(group))


def load(group: str, name: str) -> Any:
    """Import and return the object registered as ``name`` in ``group``."""
    eps = _entry_points(group)
    if name not in eps:
        available = ", ".join(sorted(eps)) or "none installed"
        raise PluginError(
            f"no {SINGULAR.get(group, group)} named '{name}'",
            hint=f"available {group}: {available}; `accelserve plugins` lists everything installed",
        )
    ep = eps[name]
    try:
        return ep.load()
    except Exception as exc:  # any import-time failure of a plugin is reported as that plugin's failure
        dist = f" (from distribution '{ep.dist.name}')" if ep.dist is not None else ""
        raise PluginError(
            f"the {group} plugin '{name}'{dist} failed to load from '{ep.value}': {type(exc).__name__}: {exc}",
            hint="fix or uninstall that plugin; other commands keep working",
        ) from exc
