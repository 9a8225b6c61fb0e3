"""How te writes a share for people: one rule for every command's lines, tables and reports.

A share (an accuracy, an agreement, a fraction of images) is a percentage with one decimal ("NN.N%").
Every command prints an accuracy the same way, so te finetune's "before" reads as te train printed it.
A difference between two shares is in signed percentage points ("+N.N points"), and an accuracy with
its 95% interval shows the bounds in points in brackets ("NN.N% [LL.L, HH.H]").

A figure that was not measured is "n/a" in a sentence; a table passes `missing=TABLE_MISSING` ("-"),
the marker its other empty cells use.
"""

from __future__ import annotations

from typing import Sequence

MISSING = "n/a"  # a figure not measured, in a sentence
TABLE_MISSING = "-"  # the same in a table cell


def percent(value: float | None, *, missing: str = MISSING) -> str:
    """A share (a fraction of 1) as a percentage with one decimal ("NN.N%"); `missing` when None."""
    return missing if value is None else f"{100 * value:.1f}%"


def points(value: float | None, *, missing: str = MISSING) -> str:
    """A difference of two shares in signed percentage points with one decimal ("+N.N points"); `missing` when
    None."""
    return missing if value is None else f"{100 * value:+.1f} points"


def percent_interval(value: float | None, interval: Sequence[float] | None, *, missing: str = MISSING) -> str:
    """A share with its 95% interval (low, high), the bounds in points: "NN.N% [LL.L, HH.H]"; `missing`
    when the share is None."""
    if value is None or interval is None:
        return missing
    low, high = interval
    return f"{percent(value)} [{100 * low:.1f}, {100 * high:.1f}]"
