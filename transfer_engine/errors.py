"""The errors `te` raises on purpose. Each carries one line a user can act on.

The CLI maps `UsageError` to exit code 2 and every other `TEError` to exit code 1, printing the message
alone (the traceback only with TE_DEBUG=1).
"""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type's name when the message is empty), cut to `limit`."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class TEError(Exception):
    """A failure `te` expected and can explain in one line (exit code 1 on the command line)."""

    exit_code = 1


class UsageError(TEError):
    """The user asked for something that does not exist or does not fit (exit code 2)."""

    exit_code = 2


class UnknownNameError(UsageError, KeyError):
    """A backbone or head name that no installed plugin provides."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(TEError):
    """Two installed distributions provide the same name; which one is meant cannot be guessed."""


class PluginError(TEError):
    """A plugin could not be loaded or does not follow the contract."""


class WeightsError(TEError):
    """Pretrained weights could not be obtained or do not fit the model."""


class ExtensionError(TEError):
    """The compiled extension transfer_engine._C is required (TE_REQUIRE_EXT=1) but unavailable."""


class CacheError(TEError):
    """A feature cache cannot do what was asked (a lock held too long, data that cannot be stored)."""


class NotACacheError(UsageError):
    """A directory given as a feature cache is missing or is not one."""


class CorruptCacheError(CacheError):
    """A feature cache's bytes disagree with its index or checksums (`te cache verify` says where)."""
