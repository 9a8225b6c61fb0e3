"""Heads: the registry and the factory that builds them."""

from __future__ import annotations

from typing import Any

from transfer_engine.errors import UsageError
from transfer_engine.heads.spec import HeadSpec, Option
from transfer_engine.registry import Registry, call_build

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


def check_options(spec: HeadSpec, options: dict[str, Any]) -> dict[str, Any]:
    """The options, checked against what `spec` declares and converted to their types (`HeadSpec.check_options`).

    Raises:
        UsageError: an option the head does not declare, or a value of the wrong type or range.
    """
    return spec.check_options(options)


def create_head(name: str, in_features: int, num_classes: int, **options: Any):
    """Build head `name` for `in_features`-long features and `num_classes` classes.

    Raises:
        UsageError: an option the head does not declare or of the wrong type or range, non-positive sizes.
        PluginError: the head's build raised, or returned no torch.nn.Module (the plugin's fault).
    """
    spec, record = registry.lookup(name)
    checked = check_options(spec, options)
    if in_features <= 0 or num_classes <= 0:
        raise UsageError(f"head {name!r} needs in_features > 0 and num_classes > 0, got {in_features}, {num_classes}")
    return call_build("head", name, record, lambda: spec.build(in_features, num_classes, **{**spec.options, **checked}))


__all__ = ["HeadSpec", "Option", "check_options", "create_head", "get_head_spec", "list_heads", "register_head",
           "registry"]
