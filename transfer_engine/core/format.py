"""How te writes a share for people: one rule for every command's lines, tables and reports.

A share (an accuracy, an agreement, a fraction of images) is a percentage with one decimal: "92.3%".
Every command prints an accuracy the same way, so te finetune's "before" reads as te train printed it.
A difference between two shares is in signed percentage points ("+1.2 points", "-0.4 points"), and an
accuracy with its 95% interval shows the bounds in points in brackets ("92.3% [91.2, 93.4]").

A figure that was not measured is "n/a" in a sentence; a table passes `missing=TABLE_MISSING` ("-"),
the marker its other empty cells use.
"""

from __future__ import annotations

from typing import Sequence

MISSING = "n/a"  # a figure not measured, in a sentence
TABLE_MISSING = "-"  # the same in a table cell


def percent(value: float | None, decimals: int = 1, *, missing: str = MISSING) -> str:
    """A share (0.923) as a percentage ("92.3%"); `missing` when None.

    `decimals` is for shares too small for one decimal (a fraction of weights or pixels), not for accuracies.
    """
    return missing if value is None else f"{100 * value:.{decimals}f}%"


def points(value: float | None, *, missing: str = MISSING) -> str:
    """A difference of two shares (0.012) in signed percentage points ("+1.2 points"); `missing` when None."""
    return missing if value is None else f"{100 * value:+.1f} points"


def percent_interval(value: float | None, interval: Sequence[float] | None, *, missing: str = MISSING) -> str:
    """A share with its 95% interval (low, high), the bounds in points: "92.3% [91.2, 93.4]"; `missing` when
    the share is None."""
    if value is None or interval is None:
        return missing
    low, high = interval
    return f"{percent(value)} [{100 * low:.1f}, {100 * high:.1f}]"
