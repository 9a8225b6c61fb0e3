"""The published figures have one source: README.md's benchmark rows are rows of benchmarks/RESULTS.md, from
the same run (date and machine), figure for figure; and `te bench --publish` is what writes both."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer_engine.bench.publish import BEGIN, END, parse_results, publish, split_row
from transfer_engine.bench.report import to_markdown, write_report
from transfer_engine.errors import TEError

ROOT = Path(__file__).resolve().parents[2]


def readme_block(text: str) -> list[str]:
    assert BEGIN in text and END in text, "README.md lost its generated benchmark block"
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip().splitlines()


def test_readme_quotes_results_md_figure_for_figure():
    published = parse_results((ROOT / "benchmarks" / "RESULTS.md").read_text())
    block = readme_block((ROOT / "README.md").read_text())
    assert published.run in block and published.machine in block, "README's run/machine line is not RESULTS.md's"
    rows = [split_row(line) for line in block if line.startswith("| ") and not line.startswith("| benchmark")]
    assert rows, "README quotes no row"
    for cells in rows:
        key = (cells[0], cells[1])
        assert key in published.rows, f"README row {key} is not in benchmarks/RESULTS.md"
        assert cells[2:] == published.rows[key], f"README and RESULTS.md disagree on {key}"
    assert [tuple(c[:2]) for c in rows] == published.headline  # exactly the rows RESULTS.md marks


def _doc(error: str | None = None, smoke: bool = False) -> dict:
    rows = [{"name": "fast thing vs the plain way", "te": 30.0, "baseline": 10.0, "unit": "img/s", "ratio": 3.0,
             "target": ">= 2.5x", "met": True, "note": "what the baseline does", "headline": True},
            {"name": "the same vs an older baseline (informational)", "te": 30.0, "baseline": 5.0, "unit": "img/s",
             "ratio": 6.0, "target": None, "met": None, "note": None}]
    machine = {"cpu": "Test CPU", "cores": 2, "flags": ["avx2"], "memory_gib": 8.0, "gpu": None, "python": "3.12",
               "versions": {"transfer_engine": "0.1.0", "torch": "2.0", "onnxruntime": None}}
    return {"suite": "quick", "command": "te bench --suite quick", "date": "2026-12-05 18:00 UTC", "smoke": smoke,
            "machine": machine, "ceilings": {"matmul_fp32_gflops": 100.0},
            "benchmarks": [{"name": "good", "rows": rows, "config": {}, "seconds": 1.0, "error": error}],
            "seconds": 12.0}


def test_results_md_carries_run_machine_versions_and_the_headline_mark():
    md = to_markdown(_doc())
    assert "Run: 2026-12-05 18:00 UTC, `te bench --suite quick`, 12 s in all." in md
    assert "Machine: Test CPU, 2 cores (avx2), 8.0 GiB, GPU: none." in md
    assert "Versions: te 0.1.0, torch 2.0, Python 3.12." in md
    published = parse_results(md)
    assert published.headline == [("good", "fast thing vs the plain way")]
    assert published.rows[("good", "fast thing vs the plain way")] == ["30", "10", "img/s", "3x", ">= 2.5x", "met"]


def test_publish_writes_results_md_and_the_readme_rows_from_one_run(tmp_path):
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "README.md").write_text(f"# te\n\nintro\n\n{BEGIN}\nold figures\n{END}\n\nmore text\n")
    doc = _doc()
    paths = write_report(doc, tmp_path / "out")
    publish(doc, paths, root=tmp_path)
    results = (tmp_path / "benchmarks" / "RESULTS.md").read_text()
    assert results == (tmp_path / "out" / "results.md").read_text()
    readme = (tmp_path / "README.md").read_text()
    assert "old figures" not in readme and readme.startswith("# te\n\nintro\n") and readme.endswith("more text\n")
    block = readme_block(readme)
    assert "Run: 2026-12-05 18:00 UTC, `te bench --suite quick`, 12 s in all." in block
    assert "| good | fast thing vs the plain way | 30 | 10 | img/s | 3x | >= 2.5x | met |" in block
    assert not any("informational" in line for line in block)  # only the headline rows
    assert (tmp_path / "benchmarks" / "ratios.png").is_file()


@pytest.mark.parametrize("doc, why", [(_doc(error="exit code 1: boom"), "good failed"),
                                      (_doc(smoke=True), "smoke sizes")])
def test_publish_refuses_a_run_that_cannot_stand_for_the_suite(tmp_path, doc, why):
    (tmp_path / "benchmarks").mkdir()
    with pytest.raises(TEError, match=why):
        publish(doc, {"markdown": str(tmp_path / "results.md")}, root=tmp_path)
    assert not (tmp_path / "benchmarks" / "RESULTS.md").exists()
