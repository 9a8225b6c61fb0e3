"""What a head plugin declares: `HeadSpec`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class HeadSpec:
    """The contract a head plugin fulfils. Building the spec must be cheap.

    Attributes:
        name: the name users type (`te train --head NAME`); unique across installed plugins.
        build: `build(in_features, num_classes, **options)` returns a torch.nn.Module mapping features
            [N, in_features] (float32) to logits [N, num_classes]. It must be exportable to ONNX and
            its state dict must hold tensors only (te saves heads as safetensors).
        options: the keyword options `build` accepts, with their defaults (e.g. {"hidden": 512}).
        trainable: False for heads that are fitted without gradient steps (a nearest-neighbour head).
        description: one line for `te heads`.
    """

    name: str
    build: Callable[..., "nn.Module"]
    options: Mapping[str, Any] = field(default_factory=dict)
    trainable: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"head name must be a non-empty string without spaces, got {self.name!r}")
        if not callable(self.build):
            raise ValueError(f"head {self.name!r}: build must be callable")
        object.__setattr__(self, "options", dict(self.options))
