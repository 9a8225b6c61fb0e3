"""The last `te plugins check` verdict of each plugin, so `te plugins` can show it.

Kept in `$XDG_CACHE_HOME/te/plugin-checks.json` (default `~/.cache/te/plugin-checks.json`), keyed by
distribution, version, group and entry point: a new version of a plugin starts unchecked. Writing is
best effort (a read-only home only loses the memo, never the check's own result).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from transfer_engine._durable import write_text_durably


def store_path() -> Path:
    """Where the verdicts are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "te" / "plugin-checks.json"


def key(distribution: str | None, version: str | None, group: str, name: str) -> str:
    """The store key of one entry point of one distribution version."""
    return f"{distribution}=={version}|{group}|{name}"


def read_all() -> dict[str, Any]:
    """Every recorded verdict ({} when none, or the file is unreadable)."""
    try:
        data = json.loads(store_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(verdicts: dict[str, dict[str, Any]]) -> None:
    """Merge `verdicts` ({key: {"passed", "summary", ...}}) into the store, atomically; errors ignored."""
    path = store_path()
    data = read_all()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    data.update({k: {**v, "checked_at": stamp} for k, v in verdicts.items()})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_durably(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass
