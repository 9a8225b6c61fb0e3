"""The click options of a command, generated from its config (`core/options.py`): declared once there.

    @click.command("train")
    @options_from(TrainConfig)
    @json_option
    def train(as_json, **fields):
        cfg = TrainConfig(**fields)

Each field declared with `option(...)` becomes one click option whose name, type, default, choices,
range and help come from the field; the command receives the field's value under the field's name.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Callable

import click

from transfer_engine.core.options import Option, default_of, options_of


class _CommaSeparated(click.ParamType):
    """A tuple typed as "a,b,c" (ints or text, each checked against the choices if any)."""

    def __init__(self, item: type, choices: tuple | None) -> None:
        self.item, self.choices = item, choices
        self.name = "list"

    def convert(self, value, param, ctx) -> tuple:
        if isinstance(value, tuple):
            return value
        parts = [v.strip() for v in str(value).split(",") if v.strip()]
        try:
            items = tuple(self.item(v) for v in parts)
        except ValueError:
            self.fail(f"expected comma-separated {self.item.__name__} values such as 1,2, got {value!r}", param, ctx)
        if self.choices is not None and (not items or any(v not in self.choices for v in items)):
            self.fail(f"expected one or more of {','.join(map(str, self.choices))}, got {value!r}", param, ctx)
        return items


class _GiB(click.ParamType):
    """A positive number of GiB on the command line, a number of bytes in the config."""

    name = "gib"

    def convert(self, value, param, ctx) -> int:
        try:
            gib = float(value)
        except (TypeError, ValueError):
            self.fail(f"expected a number of GiB, got {value!r}", param, ctx)
        if not gib > 0:
            self.fail(f"must be positive, got {value}", param, ctx)
        return int(gib * 2**30)


def _pairs(ctx, param, values: tuple[str, ...]) -> dict[str, Any]:
    """Repeatable KEY=VALUE pairs; values are read as JSON when they parse (numbers, true/false), else text."""
    options = {}
    for pair in values or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", ctx=ctx, param=param)
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _plain(annotation: Any) -> Any:
    """The type inside `X | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1 \
        else annotation


def _number_type(kind: type, spec: Option) -> click.ParamType | type:
    if spec.low is None and spec.high is None:
        return kind
    ranged = click.IntRange if kind is int else click.FloatRange
    return ranged(min=spec.low, max=spec.high, min_open=spec.low_open, max_open=spec.high_open)


def click_option(field: Any, spec: Option, annotation: Any, default: Any) -> Callable:
    """The click.option decorator of one config field."""
    kind = _plain(annotation)
    decl = spec.flag or "--" + field.name.replace("_", "-")
    kw: dict[str, Any] = {"help": spec.help, "metavar": spec.metavar, "required": spec.required}
    show = spec.shown_default if spec.shown_default is not None else default is not None and not spec.required
    if kind is bool:
        # "--x/--no-x" declares its own off switch; a lone "--x" is a flag that is off unless given
        pair = "/" in decl
        kw.update(default=default, show_default=show if pair else False, **({} if pair else {"is_flag": True}))
        kw.pop("metavar")
    elif spec.parse == "pairs":
        kw.update(multiple=True, callback=_pairs, default=())
    elif spec.parse == "gib":
        kw.update(type=_GiB(), default=default, show_default=show)
    elif typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        # the default as it is typed ("1,8"), so the help shows it that way
        kw.update(type=_CommaSeparated(item, spec.choices), default=",".join(map(str, default)),
                  show_default=bool(show and default))
    elif spec.choices is not None:
        kw.update(type=click.Choice([c for c in spec.choices if c is not None]), default=default, show_default=show)
        kw.pop("metavar")
    elif kind in (int, float):
        kw.update(type=_number_type(kind, spec), default=default, show_default=show)
    else:
        kw.update(default=default, show_default=show)
    return click.option(decl, field.name, **kw)


def options_from(config_cls: type, *, skip: tuple[str, ...] = ()) -> Callable:
    """A decorator adding one click option per config field (in field order), except the `skip`ped."""
    hints = typing.get_type_hints(config_cls)
    unknown = set(skip) - {f.name for f, _ in options_of(config_cls)}
    if unknown:
        raise TypeError(f"{config_cls.__name__} has no option field {sorted(unknown)}")

    def decorate(fn: Callable) -> Callable:
        for f, spec in reversed(list(options_of(config_cls))):
            if spec.cli and f.name not in skip:
                fn = click_option(f, spec, hints[f.name], default_of(config_cls, f.name))(fn)
        return fn

    return decorate

