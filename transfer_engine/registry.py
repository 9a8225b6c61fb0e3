"""Entry-point registries: how `te` finds backbones and heads, built-in and third-party alike.

A plugin is an entry point in the group `transfer_engine.backbones` or `transfer_engine.heads`. It
points to a spec object (`BackboneSpec` / `HeadSpec`), a list of them, or a zero-argument callable that
returns one or a list (so a model zoo can build its list on demand). te's own backbones and heads are
registered through the same groups in its pyproject.toml.

Discovery is lazy (nothing is imported until a name is asked for or listed), sorted (by entry point
name, then distribution), and records each plugin's distribution and version. A plugin that fails to
import or returns the wrong objects is recorded as broken with its error and never takes `te` down:
a third-party entry point is imported in a daemon thread (`call_plugin_code`), so neither an exception,
a `sys.exit()` nor an import that never returns (TE_PLUGIN_IMPORT_TIMEOUT seconds, default 30) can end
or block te. Two distributions providing one name make that name an error that names both. A plugin's
`build` that raises or returns no module is reported as that plugin's fault (`call_build`), never as
an internal error of te.

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
from typing import Any, Callable, Generic, Iterable, TypeVar

from transfer_engine.core.env import env_flag
from transfer_engine.errors import DuplicateNameError, PluginError, TEError, UnknownNameError, UsageError

OWN_DISTRIBUTION = "transfer-engine"
IN_PROCESS = "<in-process>"
IMPORT_TIMEOUT_ENV = "TE_PLUGIN_IMPORT_TIMEOUT"
DEFAULT_IMPORT_TIMEOUT = 30.0  # seconds; a model zoo importing timm cold takes a few

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

    @property
    def package(self) -> str:
        """The distribution and version, as a fault message names them ("te-timm 0.2.0")."""
        return " ".join(filter(None, [self.distribution or "unknown package", self.version]))

    @property
    def own(self) -> bool:
        """Whether te itself ships this entry point (its code is trusted to import in the main thread)."""
        return self.distribution is not None and self.distribution.replace("_", "-").lower() == OWN_DISTRIBUTION

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
    return env_flag("TE_DISABLE_PLUGIN_AUTOLOAD")


def _forced_plugins() -> set[str]:
    return {p.strip() for p in os.environ.get("TE_PLUGINS", "").split(",") if p.strip()}


def _short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class PluginExit(RuntimeError):
    """Plugin code raised SystemExit (or another BaseException that is not an Exception)."""


class PluginTimeout(RuntimeError):
    """Plugin code (an entry point's import) did not return within the import timeout."""


def import_timeout() -> float | None:
    """Seconds an entry point's import may take (TE_PLUGIN_IMPORT_TIMEOUT; 0 or "none": no limit).

    Raises:
        UsageError: the variable holds neither a number nor "none".
    """
    text = os.environ.get(IMPORT_TIMEOUT_ENV, "").strip().lower()
    if not text:
        return DEFAULT_IMPORT_TIMEOUT
    if text in {"none", "off"}:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise UsageError(f"{IMPORT_TIMEOUT_ENV}={text!r}: expected seconds (e.g. 30) or none") from None
    return seconds if seconds > 0 else None


def _as_exit(exc: BaseException) -> PluginExit:
    if isinstance(exc, SystemExit):
        return PluginExit(f"called sys.exit({exc.code!r})")
    return PluginExit(f"raised {_short_error(exc)}")


def call_plugin_code(fn: Callable[[], T], *, bounded: bool = True) -> T:
    """Run plugin code (an entry point's import) so that it cannot end or block te.

    An Exception it raises is raised again here; SystemExit and other BaseExceptions become a
    `PluginExit`. With `bounded`, `fn` runs in a daemon thread given `import_timeout()` seconds: past
    them a `PluginTimeout` is raised and the thread is left behind (a thread cannot be killed; being a
    daemon, it does not keep te from exiting). Unbounded (te's own entry points), `fn` runs here, and a
    KeyboardInterrupt is the user's and is not caught.

    Raises:
        Exception: what `fn` raised, PluginExit or PluginTimeout.
    """
    timeout = import_timeout() if bounded else None
    if timeout is None:
        try:
            return fn()
        except (Exception, KeyboardInterrupt):
            raise
        except BaseException as exc:
            raise _as_exit(exc) from None
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # a KeyboardInterrupt in this thread is never the user's
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="te-plugin-import", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise PluginTimeout(f"its import did not finish within {timeout:g} s (it may hang; "
                            f"{IMPORT_TIMEOUT_ENV}=SECONDS waits longer)")
    if "error" in outcome:
        error = outcome["error"]
        raise error if isinstance(error, Exception) else _as_exit(error)
    return outcome["value"]


def plugin_fault(kind: str, name: str, record: PluginRecord, what: str) -> PluginError:
    """The error for a plugin's object that misbehaved: names the plugin, its package and what it did.

    Args:
        kind: "backbone" or "head".
        name: the backbone or head name.
        record: the plugin that provides it.
        what: what went wrong, e.g. "build raised ValueError: bad size".
    """
    return PluginError(f"{kind} {name!r} of plugin {record.name!r} (package {record.package}): {what} "
                       "(a fault of the plugin: report it to its authors, or uninstall it)")


def call_hook(kind: str, name: str, record: PluginRecord, hook: Callable[[], T], what: str) -> T:
    """Call one of a plugin's hooks (its build, a head's fit); what it raises is the plugin's fault.

    te's own errors (a failed weights download, a bad option) pass through unchanged; any other
    Exception becomes a `plugin_fault` naming `what` ("build", "fit").

    Raises:
        PluginError: the hook raised.
    """
    try:
        return hook()
    except TEError:
        raise
    except Exception as exc:
        raise plugin_fault(kind, name, record, f"{what} raised {_short_error(exc)}") from exc


def call_build(kind: str, name: str, record: PluginRecord, build: Callable[[], Any]) -> Any:
    """Call a plugin's `build` (see `call_hook`) and check that it returned a torch.nn.Module.

    Raises:
        PluginError: the build raised, or returned something else than a module.
    """
    from torch import nn

    model = call_hook(kind, name, record, build, "build")
    if not isinstance(model, nn.Module):
        raise plugin_fault(kind, name, record, f"build returned {type(model).__name__}, not a torch.nn.Module")
    return model


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
            import_timeout()  # a malformed TE_PLUGIN_IMPORT_TIMEOUT is one clear error, before anything loads
            self._loaded = True
            eps = sorted(
                metadata.entry_points(group=self.group),
                key=lambda ep: (ep.name, ep.dist.name if ep.dist else "", ep.value),
            )
            records = [self._record_of(ep) for ep in eps]
            self._records.extend(records)
            # te's own entry points first: they import torch, which a plugin's timed import then finds loaded.
            for ep, record in sorted(zip(eps, records), key=lambda pair: not pair[1].own):
                self._load_entry_point(ep, record)
            self._mark_conflicts()
            self._warn_broken()

    def _record_of(self, ep: metadata.EntryPoint) -> PluginRecord:
        dist = ep.dist.name if ep.dist is not None else None
        version = ep.dist.version if ep.dist is not None else None
        return PluginRecord(ep.name, self.group, ep.value, dist, version)

    def _load_entry_point(self, ep: metadata.EntryPoint, record: PluginRecord) -> None:
        if _autoload_disabled() and not record.own and ep.name not in _forced_plugins():
            record.status = "disabled"
            record.error = "TE_DISABLE_PLUGIN_AUTOLOAD is set (name it in TE_PLUGINS to load it)"
            return
        try:
            specs = call_plugin_code(lambda: self.specs_from(ep.load()), bounded=not record.own)
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

