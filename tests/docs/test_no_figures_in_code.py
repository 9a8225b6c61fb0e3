"""Measured figures and issue numbers live in docs/ and benchmarks/RESULTS.md, written with the run that
produced them; in code they go stale without anyone noticing. Code says why and points to the doc. This
test finds the shapes such figures take (a rate, a speed-up, a machine name, a date, an issue number, a
measured percentage) in the package, the extension's sources and the build files."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FIGURE = re.compile(
    r"\b[0-9][0-9.]* ?(img/s|ms)\b"                      # a rate or a latency
    r"|\b[0-9][0-9.]* ?x (faster|slower|as fast)"        # a speed-up
    r"|\b[0-9][0-9.]*-[0-9.]+ ?x\b"                      # a range of speed-ups
    r"|\bzen ?[0-9]|\bepyc\b"                            # the machine a figure came from
    r"|measured on (avx|zen|an? [0-9]|the [0-9])|\(measured[:~ ]|measured ~"
    r"|#[0-9]+\b|\bissue #?[0-9]+"                       # an issue number
    r"|\b20[0-9]{2}-[0-9]{2}-[0-9]{2}\b"                 # a date
    r"|[0-9] min (serial|with)"
    r"|\b[0-9]+\.[0-9]+ ?%|\b[0-9.]+%? (to|->) [0-9.]+ ?%|[0-9]% with [0-9]",  # a measured percentage
    re.IGNORECASE,
)
SOURCES = ("*.py", "*.cpp", "*.cu", "*.h")


def _code_files():
    for folder in ("transfer_engine", "csrc"):
        for pattern in SOURCES:
            yield from (REPO / folder).rglob(pattern)
    yield REPO / "setup.py"
    yield REPO / "Makefile"


def test_no_measured_figure_or_issue_number_in_code():
    found = [f"{path.relative_to(REPO)}:{n}: {line.strip()}"
             for path in _code_files() if path.is_file()
             for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if FIGURE.search(line)]
    assert not found, "figures belong in docs/ or benchmarks/RESULTS.md:\n" + "\n".join(found)


def test_the_pattern_finds_the_figures_it_exists_for():
    assert all(FIGURE.search(line) for line in (
        "# measured on AVX2: 41.0 img/s", "# 3-25x faster here", "# see #14", "# Zen 4 gains 1.63x",
        "# on 2026-11-24", "# 90.0% on val",
    ))
    assert not any(FIGURE.search(line) for line in ("BOUND = 0.999", "GATE = 0.99  # 99% top-1 agreement",
                                                     "batch = 32", 'f"{rate:.1f} img/s"'))
