"""Environment switches te reads (TE_DEBUG, TE_REQUIRE_EXT, TE_DISABLE_PLUGIN_AUTOLOAD): one rule for
what turns a switch on, so `TE_DEBUG=yes` means the same as `TE_REQUIRE_EXT=yes`."""

from __future__ import annotations

import os

_ON = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    """True when environment variable `name` is 1, true, yes or on (any case, spaces ignored)."""
    return os.environ.get(name, "").strip().lower() in _ON
