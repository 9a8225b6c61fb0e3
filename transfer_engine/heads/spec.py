"""What a head plugin declares: `HeadSpec`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    import torch
    from torch import nn

# How `te train` fits a trainable head (see HeadSpec.solver).
SOLVERS = ("adamw", "lbfgs")


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
        fit: for a head with trainable=False: `fit(module, features, labels)` fits the built module in
            place from float32 features [N, in_features] and int64 labels [N] (the k-NN head stores them).
        solver: how `te train` fits a trainable head: "adamw" (minibatches, AdamW) or "lbfgs" (the loss
            is smooth and convex in the parameters: full-batch L-BFGS when the features fit in memory,
            minibatches otherwise).
        search: options `te train --sweep` tries, e.g. {"k": (1, 5, 20)}, chosen on the val split.
        train_defaults: training hyper-parameters this head prefers over te's defaults
            (keys among "lr", "epochs", "weight_decay", "batch_size").

    The last four are optional: a plugin that declares only name, build and options trains with AdamW.
    """

    name: str
    build: Callable[..., "nn.Module"]
    options: Mapping[str, Any] = field(default_factory=dict)
    trainable: bool = True
    description: str = ""
    fit: Callable[["nn.Module", "torch.Tensor", "torch.Tensor"], None] | None = None
    solver: str = "adamw"
    search: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    train_defaults: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"head name must be a non-empty string without spaces, got {self.name!r}")
        if not callable(self.build):
            raise ValueError(f"head {self.name!r}: build must be callable")
        if self.fit is not None and not callable(self.fit):
            raise ValueError(f"head {self.name!r}: fit must be callable")
        if self.solver not in SOLVERS:
            raise ValueError(f"head {self.name!r}: solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        unknown = sorted(set(self.search) - set(self.options))
        if unknown:
            raise ValueError(f"head {self.name!r}: search names option(s) it does not declare: {', '.join(unknown)}")
        unknown = sorted(set(self.train_defaults) - {"lr", "epochs", "weight_decay", "batch_size"})
        if unknown:
            raise ValueError(f"head {self.name!r}: train_defaults has unknown key(s): {', '.join(unknown)}")
        object.__setattr__(self, "options", dict(self.options))
        object.__setattr__(self, "search", {k: tuple(v) for k, v in self.search.items()})
        object.__setattr__(self, "train_defaults", dict(self.train_defaults))
