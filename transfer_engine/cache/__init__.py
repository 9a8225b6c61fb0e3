"""The feature cache: content-addressed, compressed, crash-safe storage of backbone features.

    >>> from transfer_engine.cache import FeatureCache, FeatureSpace, content_key   # doctest: +SKIP
    >>> cache = FeatureCache.open("features/")                                      # doctest: +SKIP
    >>> space = cache.space(FeatureSpace(**backbone.space_fields(), stored="int8"))  # doctest: +SKIP
    >>> space.append(keys, features)           # skips keys already present        # doctest: +SKIP
    >>> space.gather(keys)                     # float32 [N, dim]                   # doctest: +SKIP

Importing this package does not import torch; `CachedSpace`, `FeatureLoader` and `Batch` are loaded on
first use.
"""

from __future__ import annotations

from typing import Any

from transfer_engine.cache.records import Dataset, Record
from transfer_engine.cache.space import FORMAT_VERSION, STORED_DTYPES, FeatureSpace
from transfer_engine.cache.store import FeatureCache
from transfer_engine.core.digest import content_key

_LAZY = {"CachedSpace": "rows", "RowLocations": "rows", "FeatureLoader": "loader", "Batch": "loader"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"transfer_engine.cache.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'transfer_engine.cache' has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION",
    "STORED_DTYPES",
    "Batch",
    "CachedSpace",
    "Dataset",
    "FeatureCache",
    "FeatureLoader",
    "FeatureSpace",
    "Record",
    "RowLocations",
    "content_key",
]
