"""`te plugins`: every plugin te found, where it came from and whether it works."""

from __future__ import annotations

import click

from transfer_engine.cli._common import emit_json, json_option, table


@click.command("plugins")
@json_option
def plugins(as_json: bool) -> None:
    """List every backbone and head plugin: distribution, version, status and error.

    A plugin that fails to import is shown as broken with its error; it never stops te from working.

    \b
    Example:
      te plugins --json
    """
    from transfer_engine.backbones import registry as backbone_registry
    from transfer_engine.heads import registry as head_registry

    records = [r for reg in (backbone_registry, head_registry) for r in reg.plugins()]
    rows = [r.to_dict() for r in records]
    if as_json:
        emit_json({"plugins": rows})
        return
    table(
        [
            (r["name"], r["group"].rsplit(".", 1)[-1], r["distribution"], r["version"], r["status"],
             len(r["provides"]), r["error"] or "")
            for r in rows
        ],
        ["name", "group", "distribution", "version", "status", "provides", "error"],
    )
