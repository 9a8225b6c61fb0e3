"""`te backbones`: list the installed backbones."""

from __future__ import annotations

import click

from transfer_engine.cli._common import emit_json, json_option, table


@click.command("backbones")
@click.argument("pattern", required=False, metavar="[NAME|PATTERN]")
@json_option
def backbones(pattern: str | None, as_json: bool) -> None:
    """List installed backbones (built-in and from plugins).

    A PATTERN with wildcards filters the list; an exact NAME shows that backbone with all its weights
    and its preprocessing (and is an error, listing close names, when nothing has that name).

    \b
    Examples:
      te backbones
      te backbones 'resnet*' --json
      te backbones resnet50
    """
    import fnmatch

    from transfer_engine.backbones import registry

    if pattern and not any(c in pattern for c in "*?["):
        registry.lookup(pattern)  # unknown or ambiguous: one clear error (exit 2 / 1)

    conflicts = _conflicts(registry)
    rows = []
    for spec, record in registry.entries():
        if pattern and not fnmatch.fnmatch(spec.name, pattern):
            continue
        preprocess = spec.preprocess_for(spec.default_weights)
        rows.append(
            {
                "name": spec.name,
                "plugin": record.distribution,
                "plugin_version": record.version,
                "feature_dim": spec.feature_dim,
                "input_size": list(preprocess.input_size),
                "default_weights": spec.default_weights,
                "weights": list(spec.weights),
                "preprocess": preprocess.to_dict(),
                "status": "conflict" if spec.name in conflicts else "ok",
                "description": spec.description,
            }
        )
    if as_json:
        emit_json({"backbones": rows})
        return
    if pattern and len(rows) == 1 and rows[0]["name"] == pattern:
        _details(rows[0])
        return
    table(
        [
            (r["name"], r["feature_dim"], "x".join(map(str, r["input_size"][1:])), r["default_weights"] or "(random)",
             r["plugin"], r["status"])
            for r in rows
        ],
        ["name", "features", "input", "default weights", "plugin", "status"],
    )
    if not rows:
        click.echo("(no backbones match)" if pattern else "(no backbones installed)")


def _conflicts(registry) -> set[str]:
    seen: dict[str, int] = {}
    for spec, _ in registry.entries():
        seen[spec.name] = seen.get(spec.name, 0) + 1
    return {name for name, count in seen.items() if count > 1}


def _details(row: dict) -> None:
    pre = row["preprocess"]
    click.echo(f"{row['name']}  ({row['description']})")
    click.echo(f"  plugin           {row['plugin']} {row['plugin_version'] or ''}".rstrip())
    click.echo(f"  feature_dim      {row['feature_dim']}")
    click.echo(f"  weights          {', '.join(row['weights']) or '(none: random init only)'}")
    click.echo(f"  default weights  {row['default_weights'] or '(random init)'}")
    click.echo(f"  preprocessing    resize {pre['resize_size']} ({pre['interpolation']}), crop {pre['crop_size']}, "
               f"mean {tuple(round(v, 4) for v in pre['mean'])}, std {tuple(round(v, 4) for v in pre['std'])}")
