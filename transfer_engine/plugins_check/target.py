"""Which entry points `te plugins check NAME` checks, loading them, and the plugin-level checks.

NAME is an installed distribution (`te-timm`; `_`/`-` and case do not matter) or an entry-point name
(`timm`). Entry points are read from the installed metadata directly, not through te's registries, so
a plugin te would mark "disabled" (TE_DISABLE_PLUGIN_AUTOLOAD) or "conflict" is checked all the same.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from transfer_engine.errors import UsageError
from transfer_engine.plugins_check.results import FAIL, PASS, Recorder, explain
from transfer_engine.registry import OWN_DISTRIBUTION, PluginExit, PluginTimeout, call_plugin_code

BACKBONES = "transfer_engine.backbones"
HEADS = "transfer_engine.heads"
GROUPS = (BACKBONES, HEADS)


def normalize(name: str | None) -> str:
    """A distribution name compared the PEP 503 way (setuptools may record either spelling)."""
    return (name or "").replace("_", "-").replace(".", "-").lower()


@dataclass(frozen=True)
class Target:
    """One entry point to check."""

    group: str
    name: str
    value: str
    distribution: str | None
    version: str | None

    @property
    def kind(self) -> str:
        return "backbone" if self.group == BACKBONES else "head"

    @property
    def label(self) -> str:
        """How the results table names it: "backbones:timm"."""
        return f"{self.group.rsplit('.', 1)[-1]}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "name": self.name, "value": self.value,
                "distribution": self.distribution, "version": self.version}

    def load(self) -> Any:
        """Import what the entry point points to, as the registry does: a sys.exit() or a hang of a
        third-party plugin's import is an error here (see `call_plugin_code`), not the end of te."""
        entry_point = metadata.EntryPoint(self.name, self.value, self.group)
        return call_plugin_code(entry_point.load, bounded=normalize(self.distribution) != OWN_DISTRIBUTION)


def find_targets(name: str) -> list[Target]:
    """The installed entry points of distribution `name`, or named `name`, in te's two groups.

    Raises:
        UsageError: nothing matches (the message lists what is installed).
    """
    wanted = normalize(name)
    found: dict[tuple, Target] = {}
    everything: dict[str, set[str]] = {}
    for group in GROUPS:
        for ep in metadata.entry_points(group=group):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            everything.setdefault(dist or "?", set()).add(ep.name)
            if ep.name == name or (dist is not None and normalize(dist) == wanted):
                # One distribution on the path twice (an editable install and a copy) lists twice.
                key = (group, ep.name, ep.value, normalize(dist))
                found.setdefault(key, Target(group, ep.name, ep.value, dist, version))
    if not found:
        installed = [f"{d} ({', '.join(sorted(eps))})" for d, eps in sorted(everything.items())]
        close = difflib.get_close_matches(name, list(everything) + [e for v in everything.values() for e in v], n=3)
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise UsageError(f"no installed plugin distribution or entry point is named {name!r}{hint} "
                         f"(installed: {'; '.join(installed) or 'none'}; `te plugins` lists them)")
    return sorted(found.values(), key=lambda t: (t.group, t.name, normalize(t.distribution)))


def _registry(group: str):
    if group == BACKBONES:
        from transfer_engine.backbones import registry
    else:
        from transfer_engine.heads import registry
    return registry


def check_load(target: Target, rec: Recorder) -> list[Any]:
    """The `load` check: import the entry point and get specs that follow the contract.

    Returns:
        The specs it provides ([] when loading failed; the failure is recorded).
    """
    registry = _registry(target.group)
    specs: list[Any] = []
    module = target.value.split(":", 1)[0]
    contract = (f"{target.value!r} must name a {registry.spec_type.__name__}, a list of them, or a "
                "zero-argument callable returning either")

    def load() -> tuple[str, str]:
        try:
            obj = target.load()
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                return FAIL, (f"ModuleNotFoundError: no module named {exc.name!r}: the entry point names "
                              f"{target.value!r}, but the distribution installs no such module (check the "
                              "packages its pyproject.toml includes, then reinstall)")
            return FAIL, f"{explain(exc)}, while importing {module!r}: a dependency is missing"
        except AttributeError as exc:
            return FAIL, f"AttributeError: {exc}: the entry point names {target.value!r}; {contract}"
        except (PluginExit, PluginTimeout) as exc:  # raised by te on the plugin's behalf: no plugin line to show
            return FAIL, f"{type(exc).__name__}: {exc}, while importing {module!r}"
        except Exception as exc:  # the plugin's module raised while being imported
            return FAIL, f"{explain(exc)}, while importing {module!r}"
        try:
            specs.extend(registry.specs_from(obj))
        except TypeError as exc:
            if str(exc).startswith("expected "):  # the contract check, not the plugin's own code
                return FAIL, f"TypeError: {exc}: {contract}"
            return FAIL, f"{explain(exc)}, while calling {target.value!r}"
        except Exception as exc:  # a callable entry point raised while making its specs
            return FAIL, f"{explain(exc)}, while calling {target.value!r}"
        names = [s.name for s in specs]
        shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
        return PASS, f"{target.value} gives {len(names)} {target.kind}(s): {shown or 'none'}"

    rec.run("plugin", "", "load", load)
    return specs


def check_names(target: Target, specs: list[Any], rec: Recorder) -> None:
    """The `names` check: no name this entry point provides is provided by another installed plugin."""
    registry = _registry(target.group)

    def names() -> tuple[str, str]:
        mine = {s.name for s in specs}
        clashes = []
        for spec, owner in registry.entries():
            if spec.name not in mine:
                continue
            same = (owner.name == target.name and owner.value == target.value
                    and normalize(owner.distribution) == normalize(target.distribution))
            if not same:
                clashes.append(f"{spec.name!r} is also provided by {owner.label}")
        if clashes:
            more = f" (and {len(clashes) - 3} more)" if len(clashes) > 3 else ""
            return FAIL, ("; ".join(clashes[:3]) + more + f": te refuses to guess which is meant, so nobody can "
                          f"use the name; rename yours (a prefix works, e.g. 'myzoo/{sorted(mine)[0]}')")
        return PASS, f"all {len(mine)} name(s) are unique among the installed plugins"

    rec.run("plugin", "", "names", names)
