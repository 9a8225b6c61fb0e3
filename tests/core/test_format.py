"""One way to write a share for people: every command prints an accuracy as te finetune prints te train's."""

from __future__ import annotations

import ast
from pathlib import Path

import transfer_engine
from transfer_engine.core.format import TABLE_MISSING, percent, percent_interval, points


def test_a_share_is_a_percentage_with_one_decimal_and_n_a_when_not_measured():
    assert percent(0.9234) == "92.3%"
    assert percent(1.0) == "100.0%"
    assert percent(None) == "n/a"
    assert percent(None, missing=TABLE_MISSING) == "-"


def test_a_difference_is_in_signed_points_and_an_interval_in_brackets():
    assert points(0.012) == "+1.2 points" and points(-0.004) == "-0.4 points" and points(0.0) == "+0.0 points"
    assert points(None) == "n/a"
    assert percent_interval(0.9234, (0.912, 0.934)) == "92.3% [91.2, 93.4]"
    assert percent_interval(None, None, missing=TABLE_MISSING) == "-"



def test_no_module_keeps_a_percent_helper_of_its_own():
    """Seven `_pct`/`pct` helpers once wrote the same figures five ways."""
    package = Path(transfer_engine.__file__).parent
    own = [f"{path.relative_to(package)}: {node.name}" for path in package.rglob("*.py") if path.name != "format.py"
           for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
           if isinstance(node, ast.FunctionDef) and node.name.strip("_") in ("pct", "percent", "points")]
    assert not own, "use transfer_engine.core.format:\n" + "\n".join(own)
