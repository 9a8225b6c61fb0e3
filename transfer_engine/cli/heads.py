"""`te heads`: list the installed heads."""

from __future__ import annotations

import click

from transfer_engine.cli._common import emit_json, json_option, table


@click.command("heads")
@json_option
def heads(as_json: bool) -> None:
    """List installed heads (what `te train --head` accepts).

    \b
    Example:
      te heads --json
    """
    from transfer_engine.heads import registry

    rows = [
        {
            "name": spec.name,
            "plugin": record.distribution,
            "plugin_version": record.version,
            "trainable": spec.trainable,
            "options": dict(spec.options),
            "accepts": {name: option.describe() for name, option in spec.option_specs.items()},
            "description": spec.description,
        }
        for spec, record in registry.entries()
    ]
    if as_json:
        emit_json({"heads": rows})
        return
    table(
        [
            (r["name"], ", ".join(f"{k}={v}" for k, v in r["options"].items()) or "-", r["plugin"], r["description"])
            for r in rows
        ],
        ["name", "options", "plugin", "description"],
    )
