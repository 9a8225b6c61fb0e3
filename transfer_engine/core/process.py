"""Whether another process still runs: what decides if a file it left behind is still being written."""

from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this host (also one of another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
