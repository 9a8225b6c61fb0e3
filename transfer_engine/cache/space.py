"""Feature spaces: the identity of "features computed this way".

A space's id is the SHA-256 of a canonical JSON of everything that changes a stored feature: backbone
name, weights digest, transform config, layer/pooling, compute precision, feature dim, stored dtype and
the cache format version. Rows of two spaces are never mixed; changing any input gives a new space.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from transfer_engine.core.choices import COMPUTE_PRECISIONS, STORED_DTYPES
from transfer_engine.errors import UsageError

# Bump when the meaning of stored bytes changes (row layout, header, hashing): old spaces then stop
# matching new ones instead of being read wrongly.
FORMAT_VERSION = 1



def canonical_json(obj: Any) -> str:
    """JSON with sorted keys, no whitespace and only finite numbers: equal configs give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class FeatureSpace:
    """Everything that determines a stored feature row, hashed into `id`.

    Attributes:
        backbone: the backbone name (`te backbones`).
        weights_digest: the content hash of the weights (`transfer_engine.core.digest`).
        transform: the preprocessing config, plain JSON data.
        dim: features per row.
        stored: how rows are stored on disk: "fp32", "fp16" or "int8" (per-row scale).
        pooling: which layer and pooling produced the vector (e.g. "avg").
        precision: the compute precision of the forward pass ("fp32", "fp16", "bf16", "tf32").
        format_version: the cache format the bytes follow.
    """

    backbone: str
    weights_digest: str
    transform: Mapping[str, Any]
    dim: int
    stored: str = "int8"
    pooling: str = "avg"
    precision: str = "fp32"
    format_version: int = FORMAT_VERSION
    _id: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.backbone, str) or not self.backbone:
            raise UsageError(f"feature space: backbone must be a non-empty name, got {self.backbone!r}")
        if not isinstance(self.weights_digest, str) or not self.weights_digest:
            raise UsageError(f"feature space: weights_digest must be a non-empty string, got {self.weights_digest!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise UsageError(f"feature space: dim must be a positive int, got {self.dim!r}")
        if self.stored not in STORED_DTYPES:
            raise UsageError(f"unknown stored dtype {self.stored!r}; expected one of {', '.join(STORED_DTYPES)}")
        if self.precision not in COMPUTE_PRECISIONS:
            raise UsageError(
                f"unknown compute precision {self.precision!r}; expected one of {', '.join(COMPUTE_PRECISIONS)}"
            )
        if not isinstance(self.pooling, str) or not self.pooling:
            raise UsageError(f"feature space: pooling must be a non-empty string, got {self.pooling!r}")
        transform = _plain(self.transform, "transform")
        if not isinstance(transform, dict):
            raise UsageError(f"feature space: transform must be a mapping, got {type(self.transform).__name__}")
        object.__setattr__(self, "transform", transform)
        object.__setattr__(self, "_id", hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest())

    def __hash__(self) -> int:  # the transform mapping is unhashable; the id says it all
        return hash(self._id)

    @property
    def id(self) -> str:
        """The space's SHA-256 hex digest."""
        return self._id

    def to_dict(self) -> dict[str, Any]:
        """The hashed inputs as plain JSON-able data (what the index stores and `te cache info` shows)."""
        return {
            "backbone": self.backbone,
            "weights_digest": self.weights_digest,
            "transform": self.transform,
            "dim": self.dim,
            "stored": self.stored,
            "pooling": self.pooling,
            "precision": self.precision,
            "format_version": self.format_version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FeatureSpace":
        """Inverse of `to_dict`."""
        return cls(**{k: data[k] for k in ("backbone", "weights_digest", "transform", "dim", "stored", "pooling",
                                           "precision", "format_version")})


def config_digest(config: Any) -> str | None:
    """The id a stored space config hashes to, or None when it is not a space config at all (edited or
    damaged): what `te cache verify` compares with the id the config is stored under."""
    try:
        return FeatureSpace.from_dict(config).id
    except (UsageError, KeyError, TypeError, ValueError, AttributeError):
        return None


def _plain(value: Any, where: str) -> Any:
    """A JSON-able copy of `value` (tuples become lists) or a UsageError naming what does not fit."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"feature space: {where} must be finite, got {value!r}")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise UsageError(f"feature space: {where} must be JSON data (str, number, list, mapping), "
                     f"got {type(value).__name__}")
