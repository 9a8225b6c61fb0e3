"""Options declared once (no torch): a command's config field carries its help, choices and range.

A config (`core/configs/`) is a frozen dataclass whose fields are declared with `option(...)`:

    epochs: int | None = option(None, help="Passes of minibatch training.", low=1, metavar="N")

From that one declaration:
- the CLI builds the click option (`cli/_options.py`: name, type, default, choices, range, help);
- the config checks the value when it is built from Python (`check_options`, with the CLI's wording);
- `run_settings` lists what a run is *of* (fields with `changes_run=True`), the values a checkpoint must
  match before `--resume` continues it;
- the docs and `te <command> --help` read the same help text.

So a default, a choice list or a range exists in one place, and adding an option is one field.
"""

from __future__ import annotations

import dataclasses
from dataclasses import MISSING, dataclass
from typing import Any, Callable, Iterator

from transfer_engine.errors import UsageError


@dataclass(frozen=True)
class Option:
    """How one config field appears on the command line, and what values it takes.

    Attributes:
        help: the option's help text (also what `te <command> --help` prints).
        flag: the click declaration when it is not "--" + the field name with dashes, e.g. "--from" or
            "--freeze-bn/--train-bn" (a boolean with an off switch).
        metavar: the value's placeholder in the help ("N", "DIR").
        choices: the values allowed (None is allowed too when the default is None).
        low, high: the range of a number (None: unbounded); low_open/high_open exclude the bound itself.
        shown_default: what the help shows as the default, when not the default itself (a tuple's
            comma-separated form); False hides it.
        changes_run: the value is part of what a run is (a checkpoint made under another value is not
            resumed); False for how the work is done (threads, progress, where temporary files go).
        cli: False for a field only Python callers set.
        parse: how the CLI reads a value given as text, when not by its type: "pairs" (repeatable
            KEY=VALUE, values read as JSON when they parse), "gib" (GiB on the command line, bytes in the
            config), "csv" (comma-separated, into a tuple).
        required: the CLI requires it (the config's own check says so for Python callers).
    """

    help: str
    flag: str | None = None
    metavar: str | None = None
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    shown_default: str | bool | None = None
    changes_run: bool = True
    cli: bool = True
    parse: str | None = None
    required: bool = False

    def flag_name(self, field_name: str) -> str:
        """The option as a user types it: "--batch-size" (the on switch of a boolean pair)."""
        return (self.flag or "--" + field_name.replace("_", "-")).split("/")[0]


def option(default: Any = MISSING, *, default_factory: Callable[[], Any] | Any = MISSING, **spec: Any) -> Any:
    """A dataclass field declared with its command-line option (`Option`'s attributes as keywords)."""
    metadata = {"option": Option(**spec)}
    if default_factory is not MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def options_of(config: Any) -> Iterator[tuple[dataclasses.Field, Option]]:
    """(field, Option) for each field of a config class (or instance) declared with `option`, in order."""
    for f in dataclasses.fields(config):
        spec = f.metadata.get("option")
        if spec is not None:
            yield f, spec


def default_of(config_cls: type, name: str) -> Any:
    """The default of field `name` of a config class."""
    for f in dataclasses.fields(config_cls):
        if f.name == name:
            if f.default_factory is not MISSING:
                return f.default_factory()
            return f.default
    raise KeyError(name)


def check_options(config: Any) -> None:
    """Raise UsageError, worded as the CLI words it, for a value outside its declared choices or range.

    None passes where the field's default is None (it means "the default"). A tuple is checked item by
    item against the choices.
    """
    for f, spec in options_of(config):
        value = getattr(config, f.name)
        if value is None and f.default is None:
            continue
        name = spec.flag_name(f.name)
        if spec.choices is not None:
            items = value if isinstance(value, tuple) else (value,)
            if (isinstance(value, tuple) and not value) or any(v not in spec.choices for v in items):
                # a list is typed comma-separated (qkv,mlp), so its choices are shown that way
                shown = ("," if isinstance(value, tuple) else ", ").join(str(c) for c in spec.choices if c is not None)
                raise UsageError(f"{name} must be {'one or more' if isinstance(value, tuple) else 'one'} of "
                                 f"{shown}, got {_shown(value)}")
        if spec.low is not None or spec.high is not None:
            for item in value if isinstance(value, tuple) else (value,):  # a list: each of its items
                _check_range(name, item, spec)


def _check_range(name: str, value: Any, spec: Option) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{name} must be a number, got {value!r}")
    if spec.low is not None and (value <= spec.low if spec.low_open else value < spec.low):
        raise UsageError(f"{name} must be {_bound('above', spec.low, spec.low_open)}, got {value}")
    if spec.high is not None and (value >= spec.high if spec.high_open else value > spec.high):
        raise UsageError(f"{name} must be {_bound('below', spec.high, spec.high_open)}, got {value}")


def _bound(side: str, bound: float, open_: bool) -> str:
    if open_:
        return ("positive" if bound == 0 else f"above {bound:g}") if side == "above" else f"below {bound:g}"
    return f"at least {bound:g}" if side == "above" else f"at most {bound:g}"


def _shown(value: Any) -> str:
    return repr(",".join(map(str, value))) if isinstance(value, tuple) else repr(value)


def run_settings(config: Any) -> dict[str, Any]:
    """The fields that make a run what it is (`changes_run`), by name: what a checkpoint must match."""
    out = {}
    for f, spec in options_of(config):
        if spec.changes_run:
            value = getattr(config, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out
