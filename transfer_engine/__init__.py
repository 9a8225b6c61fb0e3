"""transfer_engine (`te`): plugin-based, C++-accelerated transfer learning for PyTorch.

Importing this package is cheap on purpose: torch, torchvision and the compiled extension load only
when something needs them, so `te --help` answers at once.

    >>> import transfer_engine as te
    >>> te.list_backbones()[:3]                      # doctest: +SKIP
    >>> bb = te.create_backbone("resnet50", weights="none")   # doctest: +SKIP
"""

from transfer_engine._version import __version__
from transfer_engine.errors import TEError

__all__ = [
    "__version__",
    "TEError",
    "create_backbone",
    "get_backbone_spec",
    "list_backbones",
    "create_head",
    "get_head_spec",
    "list_heads",
]


def __getattr__(name: str):
    # Lazy re-exports (PEP 562): the factories pull in the registry only when first used.
    if name in {"create_backbone", "get_backbone_spec", "list_backbones"}:
        from transfer_engine import backbones

        return getattr(backbones, name)
    if name in {"create_head", "get_head_spec", "list_heads"}:
        from transfer_engine import heads

        return getattr(heads, name)
    raise AttributeError(f"module 'transfer_engine' has no attribute {name!r}")
