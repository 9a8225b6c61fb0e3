"""Lazy loading of the compiled extension `transfer_engine._C`, with an honest fallback.

`load()` imports the extension the first time a kernel is needed. When it is missing (not built, or
built against another torch), `te` keeps working on the pure PyTorch reference kernels and says so
once on stderr; with TE_REQUIRE_EXT=1 that situation is an `ExtensionError` naming the cause and the fix.
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

from transfer_engine.core.env import env_flag
from transfer_engine.errors import ExtensionError

BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` in the environment that has torch "
    "(or run `make test`, which does)"
)

_lock = threading.Lock()
_module: ModuleType | None = None
_error: str | None = None
_loaded = False
_warned = False


def _require() -> bool:
    return env_flag("TE_REQUIRE_EXT")


def load() -> ModuleType | None:
    """Return the extension module, or None when it is unavailable (after warning once).

    Raises:
        ExtensionError: the extension is unavailable and TE_REQUIRE_EXT=1 is set.
    """
    global _module, _error, _loaded, _warned
    with _lock:
        if not _loaded:
            import torch  # noqa: F401  (the extension links against libtorch; load it first)

            try:
                from transfer_engine import _C  # type: ignore[attr-defined]

                _module = _C
            except ImportError as exc:  # not built, or an ABI mismatch with the installed torch
                _error = f"{type(exc).__name__}: {exc}"
            _loaded = True
        if _module is None:
            message = f"transfer_engine._C is unavailable ({_error}); {BUILD_HINT}"
            if _require():
                raise ExtensionError(message + ". TE_REQUIRE_EXT=1 forbids the slower fallback")
            if not _warned:
                print(f"te: warning: {message}. Using the pure PyTorch kernels (slower).", file=sys.stderr)
                _warned = True
        return _module


def available() -> bool:
    """True when the compiled extension loads (never raises, never warns)."""
    global _warned
    previous = _warned
    _warned = True  # a question is not a use: keep the warning for the first real use
    try:
        return load() is not None
    except ExtensionError:
        return False
    finally:
        _warned = previous


def info() -> dict:
    """What the extension provides on this machine, for `te --version`-style reports and tests."""
    mod = None
    if available():
        mod = _module
    return {
        "available": mod is not None,
        "error": _error,
        "cuda_compiled": bool(mod.cuda_compiled()) if mod is not None else False,
        "openmp_max_threads": int(mod.openmp_max_threads()) if mod is not None else 0,
        "path": getattr(mod, "__file__", None),
    }
