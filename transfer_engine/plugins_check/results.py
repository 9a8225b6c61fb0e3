"""What `te plugins check` reports: one `CheckResult` per check, gathered in a `CheckReport`."""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class CheckResult:
    """One check of one plugin object.

    Attributes:
        entry_point: the entry point the object came from ("group-kind:name", e.g. "backbones:timm").
        kind: "plugin" (the entry point itself), "backbone" or "head".
        name: the backbone or head name ("" for plugin-level checks).
        check: what was checked: load, names, preprocess, build, forward, onnx, safetensors.
        status: "pass", "fail" or "skip".
        detail: one line: what was found, and for a failure what to change.
        seconds: how long the check took.
    """

    entry_point: str
    kind: str
    name: str
    check: str
    status: str
    detail: str
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3)}


@dataclass
class CheckReport:
    """Everything `te plugins check NAME` found.

    Attributes:
        target: the NAME asked for (a distribution or entry-point name).
        entry_points: the entry points checked, as {"group", "name", "value", "distribution", "version"}.
        results: every check, in the order run.
        sampled: per entry point, how many backbones it declares and which were checked.
    """

    target: str
    entry_points: list[dict[str, Any]] = field(default_factory=list)
    results: list[CheckResult] = field(default_factory=list)
    sampled: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == FAIL]

    @property
    def passed(self) -> bool:
        """True when nothing failed and at least one check passed."""
        return not self.failures and any(r.status == PASS for r in self.results)

    def counts(self) -> dict[str, int]:
        return {s: sum(r.status == s for r in self.results) for s in (PASS, FAIL, SKIP)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "passed": self.passed,
            "counts": self.counts(),
            "entry_points": self.entry_points,
            "sampled": self.sampled,
            "checks": [r.to_dict() for r in self.results],
        }


def explain(exc: BaseException) -> str:
    """One line for an exception a plugin raised: type, message, and the plugin line that raised it."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    if len(first) > 300:  # some libraries put a whole graph or tensor in the first line
        first = first[:297] + "..."
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        # The innermost frame is where the plugin (or the library it called) raised.
        where = f" at {_short_path(last.filename)}:{last.lineno}"
    return f"{type(exc).__name__}: {first}{where}" if first else f"{type(exc).__name__}{where}"


def _short_path(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return "/".join(parts[parts.index(marker) + 1:])
    return "/".join(parts[-2:])


class Recorder:
    """Runs the checks of one entry point and appends their results to a report."""

    def __init__(self, report: CheckReport, entry_point: str) -> None:
        self.report = report
        self.entry_point = entry_point

    def add(self, kind: str, name: str, check: str, status: str, detail: str, seconds: float = 0.0) -> CheckResult:
        """Record a result decided by the caller."""
        result = CheckResult(self.entry_point, kind, name, check, status, detail, seconds)
        self.report.results.append(result)
        return result

    def run(self, kind: str, name: str, check: str, fn: Callable[[], tuple[str, str]], hint: str = "") -> CheckResult:
        """Run `fn` (returning (status, detail)) as one check; an exception it raises is a failure.

        Args:
            hint: what to do, appended to the detail when `fn` raises.
        """
        start = time.perf_counter()
        try:
            status, detail = fn()
        except Exception as exc:  # the plugin's code failing is exactly what a check reports
            status, detail = FAIL, explain(exc) + (f"; {hint}" if hint else "")
        return self.add(kind, name, check, status, detail, time.perf_counter() - start)
