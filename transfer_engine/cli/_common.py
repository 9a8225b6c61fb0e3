"""What every command shares: the --json option, stdout/stderr discipline and table printing.

Contract: with --json a command prints exactly one JSON object on stdout and nothing else there;
progress, warnings and tables for people go to stderr or, without --json, to stdout.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Sequence

import click

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout (and nothing else there)."
)

# An option of how a command runs, not of what it computes, declared once for every command that writes.
overwrite_option = click.option("--overwrite", is_flag=True, help="Replace what is already at --out.")



def nproc_option(help: str):
    """--nproc N: te relaunches itself under torchrun with N processes (`relaunch_if_asked`)."""
    return click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True, help=help)


def relaunch_if_asked(nproc: int) -> None:
    """With --nproc N > 1 outside torchrun: run this same command under torchrun, exit with its status."""
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        from transfer_engine.core.runtime import relaunch_under_torchrun

        raise SystemExit(relaunch_under_torchrun(nproc))


def on_rank0() -> bool:
    """Whether this process prints the command's result (torchrun's rank 0, or no torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def emit_json(obj: Any) -> None:
    """Print `obj` as one JSON document on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def info(message: str) -> None:
    """A line for people, on stderr (so stdout stays machine-readable)."""
    click.echo(message, err=True)


SKIPPED_SHOWN = 20


def warn_skipped(failed: Sequence[dict[str, str]]) -> None:
    """A warning on stderr naming each file a command skipped ({"path", "reason"} each; the first 20)."""
    if not failed:
        return
    info(f"te: warning: {len(failed)} file(s) skipped (unreadable, not an image, or left out of the folder walk):")
    for f in failed[:SKIPPED_SHOWN]:
        info(f"  {f['path']}: {f['reason']}")
    if len(failed) > SKIPPED_SHOWN:
        info(f"  ... and {len(failed) - SKIPPED_SHOWN} more (--json lists them all)")


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], out: Callable[[str], None] = click.echo) -> None:
    """Print an aligned plain-text table."""
    text_rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        widths = [max(w, len(v)) for w, v in zip(widths, row)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    out(line)
    out("  ".join("-" * w for w in widths))
    for row in text_rows:
        out("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
