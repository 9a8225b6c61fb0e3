"""What a head plugin declares: `HeadSpec`, and `Option` for the type and range of each of its options.

Options are checked in one place, `HeadSpec.check_options`, before a head is built: `te train --option
hidden=-5` is one line naming the option and what it accepts, never an error from deep in the build.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

# How `te train` fits a trainable head (see HeadSpec.solver).
SOLVERS = ("adamw", "lbfgs")
# How a head takes features divided by one global scale, which te trains on for a better-conditioned fit
# (see HeadSpec.input_scale).
INPUT_SCALES = ("auto", "fold", "invariant", "raw")
OPTION_TYPES = (int, float, bool, str)
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a text"}


@dataclass(frozen=True)
class Option:
    """The declaration of one head option: its default, type and allowed range.

    A plugin may give a bare default instead (`options={"bias": True}`): its type is then the default's,
    with no range.

    Attributes:
        default: the value used when the user gives none.
        type: int, float, bool or str (None: the default's type). A float option accepts an integer.
        min, max: inclusive bounds of a number (None: unbounded).
        min_open, max_open: make the bound exclusive (dropout in [0, 1) is max=1, max_open=True).
        choices: the only values allowed, when not empty.
    """

    default: Any
    type: type | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False
    choices: tuple = ()

    def __post_init__(self) -> None:
        kind = self.type if self.type is not None else type(self.default)
        object.__setattr__(self, "type", kind if kind in OPTION_TYPES else None)
        object.__setattr__(self, "choices", tuple(self.choices))
        if (self.min is not None or self.max is not None) and self.type not in (int, float):
            raise ValueError(f"an option with a range must be an int or float, not {kind.__name__}")

    def describe(self) -> str:
        """What the option accepts, in words: "an integer >= 1", "a number in [0, 1)"."""
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        if self.type is None:
            return "any value"
        words = _TYPE_WORDS[self.type]
        if self.min is not None and self.max is not None:
            return (f"{words} in {'(' if self.min_open else '['}{self.min:g}, "
                    f"{self.max:g}{')' if self.max_open else ']'}")
        if self.min is not None:
            return f"{words} {'>' if self.min_open else '>='} {self.min:g}"
        if self.max is not None:
            return f"{words} {'<' if self.max_open else '<='} {self.max:g}"
        return words

    def check(self, value: Any) -> Any:
        """`value` as this option's type (an int given for a float becomes a float).

        Raises:
            ValueError: the value is of another type, outside the range, or not among the choices.
        """
        value = self._typed(value)
        if self.choices and value not in self.choices:
            raise ValueError(self.describe())
        if self.type in (int, float) and not self._in_range(value):
            raise ValueError(self.describe())
        return value

    def _typed(self, value: Any) -> Any:
        if self.type is None:
            return value
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type is float and is_number and math.isfinite(value):
            return float(value)
        if self.type is int and is_number and isinstance(value, int):
            return value
        if self.type in (bool, str) and isinstance(value, self.type):
            return value
        raise ValueError(self.describe())

    def _in_range(self, value: float) -> bool:
        low_ok = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high_ok = self.max is None or (value < self.max if self.max_open else value <= self.max)
        return low_ok and high_ok


@dataclass(frozen=True)
class HeadSpec:
    """The contract a head plugin fulfils. Building the spec must be cheap.

    Attributes:
        name: the name users type (`te train --head NAME`); unique across installed plugins.
        build: `build(in_features, num_classes, **options)` returns a torch.nn.Module mapping features
            [N, in_features] (float32) to logits [N, num_classes]. It must be exportable to ONNX and
            its state dict must hold tensors only (te saves heads as safetensors).
        options: the keyword options `build` accepts: each an `Option` (default, type, range) or a bare
            default (e.g. {"hidden": Option(512, int, min=1), "bias": True}). After construction this
            maps each name to its default; `option_specs` holds the declarations.
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
        input_scale: whether `te train` may fit the head on features divided by one global scale (their
            typical norm; better conditioned) and still save a head that takes raw features:
            "invariant": a global scale of the features does not change the logits (cosine, k-NN);
            "fold": the first layer is an `nn.Linear` (or the first of an `nn.Sequential`), whose weight te
            divides by the scale after training (W x / s = (W / s) x); "raw": train on the raw features;
            "auto" (the default): "fold" when the built head starts with an `nn.Linear`, else "raw".
            `te plugins check` tests the declaration.

    All but name and build are optional: a plugin declaring only name, build and options trains with AdamW.
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
    input_scale: str = "auto"
    option_specs: Mapping[str, Option] = field(init=False, repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"head name must be a non-empty string without spaces, got {self.name!r}")
        if not callable(self.build):
            raise ValueError(f"head {self.name!r}: build must be callable")
        if self.fit is not None and not callable(self.fit):
            raise ValueError(f"head {self.name!r}: fit must be callable")
        if self.solver not in SOLVERS:
            raise ValueError(f"head {self.name!r}: solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.input_scale not in INPUT_SCALES:
            raise ValueError(f"head {self.name!r}: input_scale must be one of {', '.join(INPUT_SCALES)}, got "
                             f"{self.input_scale!r}")
        unknown = sorted(set(self.search) - set(self.options))
        if unknown:
            raise ValueError(f"head {self.name!r}: search names option(s) it does not declare: {', '.join(unknown)}")
        unknown = sorted(set(self.train_defaults) - {"lr", "epochs", "weight_decay", "batch_size"})
        if unknown:
            raise ValueError(f"head {self.name!r}: train_defaults has unknown key(s): {', '.join(unknown)}")
        declared = {k: v if isinstance(v, Option) else Option(v) for k, v in self.options.items()}
        object.__setattr__(self, "option_specs", declared)
        object.__setattr__(self, "options", {k: o.default for k, o in declared.items()})
        object.__setattr__(self, "search", {k: tuple(v) for k, v in self.search.items()})
        object.__setattr__(self, "train_defaults", dict(self.train_defaults))
        for name, option in declared.items():  # a plugin's own defaults and sweep values must fit its declaration
            for value in (option.default, *self.search.get(name, ())):
                try:
                    option.check(value)
                except ValueError:
                    raise ValueError(f"head {self.name!r}: option {name!r} is declared as {option.describe()}, "
                                     f"but its default or search holds {value!r}") from None

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The user's `options`, checked against the declarations and converted to their types.

        Returns:
            The given options (not the defaults), each as its declared type.

        Raises:
            UsageError: an option the head does not declare, or a value of the wrong type or range;
                the message names the option and what it accepts.
        """
        unknown = sorted(set(options) - set(self.option_specs))
        if unknown:
            accepted = ", ".join(self.option_specs) or "none"
            raise UsageError(f"head {self.name!r} has no option(s) {', '.join(unknown)}; it accepts: {accepted}")
        checked = {}
        for name, value in options.items():
            option = self.option_specs[name]
            try:
                checked[name] = option.check(value)
            except ValueError:
                raise UsageError(f"head {self.name!r} option {name}={value!r}: expected {option.describe()} "
                                 f"(default {option.default!r})") from None
        return checked


def first_linear(module: "nn.Module") -> "nn.Linear | None":
    """The head's first layer when it is an `nn.Linear` (the module itself, or an `nn.Sequential`'s first)."""
    from torch import nn

    if isinstance(module, nn.Linear):
        return module
    if isinstance(module, nn.Sequential) and len(module) and isinstance(module[0], nn.Linear):
        return module[0]
    return None


def input_scale_of(spec: HeadSpec, module: "nn.Module") -> str:
    """The spec's `input_scale` with "auto" resolved on the built module: "fold", "invariant" or "raw"."""
    if spec.input_scale != "auto":
        return spec.input_scale
    return "fold" if first_linear(module) is not None else "raw"
