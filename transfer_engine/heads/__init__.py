"""Heads: the registry and the factory that builds them."""

from __future__ import annotations

from typing import Any

from transfer_engine.errors import UsageError
from transfer_engine.heads.spec import HeadSpec
from transfer_engine.registry import Registry

GROUP = "transfer_engine.heads"

registry: Registry[HeadSpec] = Registry(GROUP, "head", HeadSpec)


def list_heads() -> list[str]:
    """Names of all installed heads, sorted."""
    return registry.names()


def get_head_spec(name: str) -> HeadSpec:
    """The declaration of head `name` (UnknownNameError / DuplicateNameError as for backbones)."""
    return registry.get(name)


def register_head(spec: HeadSpec) -> HeadSpec:
    """Register a head from Python code; installed plugins use entry points."""
    return registry.register(spec)


def check_options(spec: HeadSpec, options: dict[str, Any]) -> None:
    """Raise a UsageError naming the options `spec` does not declare (and those it does)."""
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        accepted = ", ".join(spec.options) or "none"
        raise UsageError(f"head {spec.name!r} has no option(s) {', '.join(unknown)}; it accepts: {accepted}")


def create_head(name: str, in_features: int, num_classes: int, **options: Any):
    """Build head `name` for `in_features`-long features and `num_classes` classes.

    Raises:
        UsageError: an option the head does not declare, or non-positive sizes.
    """
    spec = registry.get(name)
    check_options(spec, options)
    if in_features <= 0 or num_classes <= 0:
        raise UsageError(f"head {name!r} needs in_features > 0 and num_classes > 0, got {in_features}, {num_classes}")
    return spec.build(in_features, num_classes, **{**spec.options, **options})


__all__ = ["HeadSpec", "check_options", "create_head", "get_head_spec", "list_heads", "register_head", "registry"]
