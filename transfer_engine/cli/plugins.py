"""`te plugins`: every plugin te found, where it came from and whether it works; `te plugins check NAME`:
the conformance suite a plugin author runs before publishing."""

from __future__ import annotations

import contextlib
import sys

import click

from transfer_engine.cli._common import emit_json, info, json_option, table


@click.group("plugins", invoke_without_command=True)
@json_option
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every backbone and head plugin: distribution, version, status, error, last check.

    A plugin that fails to import is shown as broken with its error, one whose names another plugin
    also provides as conflict; neither stops te from working. The check column is the verdict of the
    last `te plugins check` of that plugin version (a wrong feature_dim only shows there: listing
    builds no model).

    \b
    Examples:
      te plugins
      te plugins --json
      te plugins check te-timm
    """
    if ctx.invoked_subcommand is not None:
        return
    from transfer_engine.backbones import registry as backbone_registry
    from transfer_engine.heads import registry as head_registry
    from transfer_engine.plugins_check import verdicts

    memo = verdicts.read_all()
    records = [r for reg in (backbone_registry, head_registry) for r in reg.plugins()]
    rows = [{**r.to_dict(), "check": memo.get(verdicts.key(r.distribution, r.version, r.group, r.name))}
            for r in records]
    if as_json:
        emit_json({"plugins": rows})
        return
    table(
        [
            (r["name"], r["group"].rsplit(".", 1)[-1], r["distribution"], r["version"], r["status"],
             len(r["provides"]), _check_cell(r["check"]), r["error"] or "")
            for r in rows
        ],
        ["name", "group", "distribution", "version", "status", "provides", "check", "error"],
    )


def _check_cell(verdict: dict | None, width: int = 60) -> str:
    """The last check's verdict in a table cell; the full text is in --json and in `te plugins check`."""
    if not verdict:
        return "-"
    if verdict.get("passed"):
        return "passed"
    text = f"FAILED {verdict.get('summary', '')}"
    return text if len(text) <= width else text[: width - 3] + "..."


@plugins.command("check", short_help="Run the conformance checks on an installed plugin (exit 1 on failure).")
@click.argument("name", metavar="NAME")
@click.option("--limit", type=click.IntRange(min=1), default=3, show_default=True, metavar="N",
              help="A plugin declaring more backbones than N gets N of them checked, spread over its names.")
@click.option("--all", "check_all", is_flag=True, help="Check every backbone the plugin declares, however many.")
@click.option("--backbone", "--only", "pattern", metavar="PATTERN",
              help="Check only the backbones and heads whose name matches this shell pattern ('timm/resnet*').")
@click.option("--max-params", default="50M", show_default=True, metavar="COUNT",
              help="The default sample passes over models larger than this (e.g. 50M, 1.5B; 0: no limit).")
@click.option("--no-onnx", "skip_onnx", is_flag=True, help="Leave out the ONNX export checks (the slowest).")
@json_option
def check(name: str, limit: int, check_all: bool, pattern: str | None, max_params: str, skip_onnx: bool,
          as_json: bool) -> None:
    """Check an installed plugin against te's contract; exit 1 when a check fails.

    NAME is a distribution (te-timm) or an entry-point name (timm). For each of its entry points:
    it loads and gives valid specs (load), its names clash with no other plugin (names); each backbone,
    built with random weights, has complete preprocessing (preprocess), builds (build), gives
    [N, feature_dim] at its input size (forward) and exports to ONNX with the same outputs (onnx);
    each head builds with its declared options, maps features to logits, and survives a safetensors
    save and load (safetensors) and ONNX export. Nothing is downloaded.

    \b
    Examples:
      te plugins check te-efficientnet-lite
      te plugins check te-timm --backbone 'timm/resnet*'
      te plugins check my-plugin --json
    """
    from transfer_engine.errors import UsageError
    from transfer_engine.plugins_check import check_plugin
    from transfer_engine.plugins_check.backbones import format_count, parse_count

    try:
        cap = parse_count(max_params)
    except ValueError:
        raise UsageError(f"--max-params {max_params!r}: expected a count such as 50M, 1.5B or 0") from None
    # A plugin's build() may print; with --json stdout must hold the one JSON object only.
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        report = check_plugin(name, limit=limit, pattern=pattern, check_all=check_all, max_params=cap,
                              onnx=not skip_onnx, remember=True)
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_report(report, format_count)
    if not report.passed:
        raise click.exceptions.Exit(1)


def _print_report(report, format_count) -> None:
    for ep in report.entry_points:
        click.echo(f"{ep['group'].rsplit('.', 1)[-1]}:{ep['name']} = {ep['value']}  "
                   f"({ep['distribution']} {ep['version']})")
    for label, sample in report.sampled.items():
        if len(sample["checked"]) < sample["declared"]:
            over = sample["passed_over"]
            skipped = (f"; passed over {len(over)} larger than --max-params: "
                       + ", ".join(f"{o['name']} ({format_count(o['parameters'])})" for o in over[:3])
                       + (", ..." if len(over) > 3 else "")) if over else ""
            click.echo(f"{label}: checking {len(sample['checked'])} of its {sample['declared']} backbones "
                       f"(--all for every one, --backbone PATTERN to choose){skipped}")
    click.echo()
    table(
        [(r.entry_point, r.name or "-", r.check, r.status.upper() if r.status == "fail" else r.status,
          f"{r.seconds:.1f}s", r.detail) for r in report.results],
        ["entry point", "name", "check", "result", "time", "detail"],
    )
    counts = report.counts()
    verdict = "PASSED" if report.passed else "FAILED"
    click.echo(f"\n{verdict}: {counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped")
    if not report.passed and not counts["fail"]:
        info("te: nothing was checked (no backbone or head matched)")
