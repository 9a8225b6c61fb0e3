"""Entry-point registries: how `te` finds backbones and heads, built-in and third-party alike.

A plugin is an entry point in the group `transfer_engine.backbones` or `transfer_engine.heads`. It
points to a spec object (`BackboneSpec` / `HeadSpec`), a list of them, or a zero-argument callable that
returns one or a list (so a model zoo can build its list on demand). te's own backbones and heads are
registered through the same groups in its pyproject.toml.

Discovery is lazy (nothing is imported until a name is asked for or listed), sorted (by entry point
name, then distribution), and records each plugin's distribution and version. A plugin that fails to
import or returns the wrong objects is recorded as broken with its error and never takes `te` down.
Two distributions providing one name make that name an error that names both.

TE_DISABLE_PLUGIN_AUTOLOAD=1 loads only te's own entry points; TE_PLUGINS=name1,name2 then loads the
named third-party plugins anyway (like pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD and -p).
"""

from __future__ import annotations

import difflib
import os
import sys
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Generic, Iterable, TypeVar

from transfer_engine.errors import DuplicateNameError, UnknownNameError

OWN_DISTRIBUTION = "transfer-engine"
IN_PROCESS = "<in-process>"

T = TypeVar("T")


@dataclass
class PluginRecord:
    """One entry point (or one in-process registration) and what became of it.

    status is "ok", "broken" (failed to load or broke the contract), "conflict" (loaded, but a name
    it provides is also provided by another distribution) or "disabled" (autoload is off).
    """

    name: str
    group: str
    value: str
    distribution: str | None
    version: str | None
    status: str = "not loaded"
    error: str | None = None
    provides: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How messages name this plugin: distribution, version and entry point."""
        dist = f"{self.distribution} {self.version}" if self.distribution else "unknown distribution"
        return f"{dist} (entry point {self.name!r} = {self.value})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "value": self.value,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "error": self.error,
            "provides": list(self.provides),
        }


def _autoload_disabled() -> bool:
    return os.environ.get("TE_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in {"1", "true", "yes", "on"}


def _forced_plugins() -> set[str]:
    return {p.strip() for p in os.environ.get("TE_PLUGINS", "").split(",") if p.strip()}


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Registry(Generic[T]):
    """Specs of one kind (backbones or heads) found through one entry-point group.

    Args:
        group: the entry-point group, e.g. "transfer_engine.backbones".
        kind: the word used in messages, e.g. "backbone".
        spec_type: the class every provided object must be an instance of.
    """

    def __init__(self, group: str, kind: str, spec_type: type) -> None:
        self.group = group
        self.kind = kind
        self.spec_type = spec_type
        self._lock = threading.RLock()
        self._loaded = False
        self._records: list[PluginRecord] = []
        self._by_name: dict[str, list[tuple[T, PluginRecord]]] = {}

    # -- discovery -------------------------------------------------------------------------------

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded:
                return
            self._loaded = True
            eps = sorted(
                metadata.entry_points(group=self.group),
                key=lambda ep: (ep.name, ep.dist.name if ep.dist else "", ep.value),
            )
            for ep in eps:
                self._load_entry_point(ep)
            self._mark_conflicts()
            self._warn_broken()

    def _load_entry_point(self, ep: metadata.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        record = PluginRecord(ep.name, self.group, ep.value, dist, version)
        self._records.append(record)
        own = dist is not None and dist.replace("_", "-").lower() == OWN_DISTRIBUTION
        if _autoload_disabled() and not own and ep.name not in _forced_plugins():
            record.status = "disabled"
            record.error = "TE_DISABLE_PLUGIN_AUTOLOAD is set (name it in TE_PLUGINS to load it)"
            return
        try:
            specs = self.specs_from(ep.load())
        except Exception as exc:  # a plugin's bug must never take te down
            record.status = "broken"
            record.error = _short_error(exc)
            return
        record.status = "ok"
        for spec in specs:
            self._add(spec, record)

    def specs_from(self, obj: Any) -> list[T]:
        """Turn what an entry point points to into a list of specs, enforcing the contract.

        Also used by `te plugins check`, which loads entry points itself to explain their failures.

        Args:
            obj: a spec, a list of specs, or a zero-argument callable returning either.

        Returns:
            The specs.

        Raises:
            TypeError: `obj` (or what it returned) is not a spec or a list of them.
        """
        if callable(obj) and not isinstance(obj, self.spec_type):
            obj = obj()
        items = [obj] if isinstance(obj, self.spec_type) else obj
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise TypeError(
                f"expected a {self.spec_type.__name__}, a list of them, or a callable returning either; "
                f"got {type(obj).__name__}"
            )
        specs = list(items)
        for spec in specs:
            if not isinstance(spec, self.spec_type):
                raise TypeError(f"expected {self.spec_type.__name__} objects, got {type(spec).__name__}")
        return specs

    def _add(self, spec: T, record: PluginRecord) -> None:
        name = getattr(spec, "name")
        record.provides.append(name)
        self._by_name.setdefault(name, []).append((spec, record))

    def _mark_conflicts(self) -> None:
        for name, owners in self._by_name.items():
            if len(owners) < 2:
                continue
            for _, record in owners:
                record.status = "conflict"
                others = ", ".join(r.label for _, r in owners if r is not record) or record.label
                note = f"{self.kind} {name!r} is also provided by {others}"
                record.error = f"{record.error}; {note}" if record.error else note

    def _warn_broken(self) -> None:
        for record in self._records:
            if record.status == "broken":
                print(
                    f"te: warning: {self.kind} plugin {record.name!r} from {record.label} failed to load "
                    f"({record.error}); `te plugins` lists it",
                    file=sys.stderr,
                )

    # -- registration in process (notebooks, tests, applications embedding te) ---------------------

    def register(self, spec: T, *, plugin: str = IN_PROCESS) -> T:
        """Register a spec from Python code; it then behaves like one from an installed plugin.

        Returns the spec, so this also works as `registry.register(BackboneSpec(...))`.
        """
        if not isinstance(spec, self.spec_type):
            raise TypeError(f"expected {self.spec_type.__name__}, got {type(spec).__name__}")
        with self._lock:
            self._ensure_loaded()
            record = PluginRecord(plugin, self.group, repr(spec.name), IN_PROCESS, None, status="ok")  # type: ignore[attr-defined]
            self._records.append(record)
            self._add(spec, record)
            self._mark_conflicts()
        return spec

    def unregister(self, name: str, *, plugin: str = IN_PROCESS) -> None:
        """Remove an in-process registration (installed plugins are removed by uninstalling them)."""
        with self._lock:
            owners = self._by_name.get(name, [])
            keep = [(s, r) for s, r in owners if not (r.distribution == IN_PROCESS and r.name == plugin)]
            self._records = [
                r for r in self._records
                if not (r.distribution == IN_PROCESS and r.name == plugin and name in r.provides)
            ]
            if keep:
                self._by_name[name] = keep
                if len(keep) == 1 and keep[0][1].status == "conflict":
                    keep[0][1].status, keep[0][1].error = "ok", None
            else:
                self._by_name.pop(name, None)

    def reload(self) -> None:
        """Forget everything and rediscover on next use (after installing a plugin in-process)."""
        with self._lock:
            self._loaded = False
            self._records = []
            self._by_name = {}

    # -- queries ------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        """All provided names, sorted (names in conflict included)."""
        self._ensure_loaded()
        return sorted(self._by_name)

    def entries(self) -> list[tuple[T, PluginRecord]]:
        """Every (spec, provider) pair, sorted by name then distribution; a conflict shows twice."""
        self._ensure_loaded()
        return [
            pair
            for name in sorted(self._by_name)
            for pair in sorted(self._by_name[name], key=lambda p: p[1].distribution or "")
        ]

    def plugins(self) -> list[PluginRecord]:
        """Every plugin (entry point) of this group, with its status."""
        self._ensure_loaded()
        return list(self._records)

    def lookup(self, name: str) -> tuple[T, PluginRecord]:
        """The spec for `name` and the plugin that provides it.

        Raises:
            UnknownNameError: no plugin provides `name` (the message lists close names).
            DuplicateNameError: two distributions provide `name` (the message names both).
        """
        self._ensure_loaded()
        owners = self._by_name.get(name)
        if not owners:
            raise UnknownNameError(self._unknown_message(name))
        if len(owners) > 1:
            labels = " and ".join(r.label for _, r in owners)
            raise DuplicateNameError(
                f"{self.kind} {name!r} is provided by more than one plugin: {labels}; uninstall one of them"
            )
        return owners[0]

    def get(self, name: str) -> T:
        """The spec for `name` (see `lookup` for the errors)."""
        return self.lookup(name)[0]

    def __contains__(self, name: object) -> bool:
        self._ensure_loaded()
        return name in self._by_name

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._by_name)
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        if not close:
            lowered = name.lower()
            close = [k for k in known if lowered in k.lower()][:5]
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        listing = f" (`te {self.kind}s` lists all {len(known)})" if known else f" (no {self.kind}s are installed)"
        broken = [r for r in self._records if r.status == "broken"]
        if broken:
            listing += f"; {len(broken)} plugin(s) failed to load, see `te plugins`"
        return f"unknown {self.kind} {name!r}{hint}{listing}"

