"""What `te cache info` shows: spaces with their size on disk, data sets with their counts."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from transfer_engine.cache import artifacts
from transfer_engine.cache.space import FORMAT_VERSION

if TYPE_CHECKING:
    from transfer_engine.cache.store import FeatureCache


def _size(path: os.PathLike) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def describe(cache: "FeatureCache") -> dict[str, Any]:
    """A JSON-able summary of a cache (one snapshot of the index; file sizes as found).

    Returns:
        {"cache", "format_version", "bytes", "spaces": [...], "datasets": [...]}: each space with its id,
        backbone, dim, stored dtype, rows, shards and bytes on disk; each data set with its record
        count, classes, counts per split and per label, and how many of its records each space covers.
    """
    index = cache.index
    with index.snapshot():
        space_rows = index.spaces()
        spaces = []
        for s in space_rows:
            shards = index.shards(s.id)
            spaces.append({
                "id": s.digest,
                "backbone": s.config.get("backbone"),
                "weights_digest": s.config.get("weights_digest"),
                "pooling": s.config.get("pooling"),
                "precision": s.config.get("precision"),
                "stored": s.stored,
                "dim": s.dim,
                "rows": index.count_rows(s.id),
                "shards": len(shards),
                "bytes": sum(_size(cache.shard_path(s.digest, sh.id)) for sh in shards),
            })
        datasets = []
        for name in index.dataset_names():
            class_names = index.dataset_classes(name) or []
            splits, labels = index.dataset_counts(name)
            datasets.append({
                "name": name,
                "records": sum(splits.values()),
                "classes": class_names,
                "splits": splits,
                "labels": {(class_names[k] if k is not None and 0 <= k < len(class_names) else str(k)): n
                           for k, n in labels.items()},
                "coverage": {s.digest: index.dataset_coverage(name, s.id) for s in space_rows},
            })
    index_bytes = sum(_size(cache.root / f) for f in ("index.sqlite", "index.sqlite-wal"))
    stored = [{"name": name, "file": r["file"], "bytes": r["bytes"]}
              for name, r in sorted(artifacts.records(cache).items())]
    return {
        "cache": str(cache.root),
        "format_version": FORMAT_VERSION,
        "bytes": index_bytes + sum(s["bytes"] for s in spaces) + sum(a["bytes"] for a in stored),
        "index_bytes": index_bytes,
        "spaces": spaces,
        "datasets": datasets,
        "artifacts": stored,
    }
