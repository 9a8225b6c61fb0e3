"""`te bench` runs each benchmark script, keeps the machine and its ceilings with the results, and tells
the truth: a target not met is shown as not met, a script that crashes fails the run and is named."""

from __future__ import annotations

import json
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import argparse, json
    p = argparse.ArgumentParser()
    p.add_argument("--json")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    print("measuring", "quick" if a.quick else "full")
    rows = [
        {"name": "fast thing", "te": 30.0, "baseline": 10.0, "unit": "img/s", "ratio": 3.0, "target": ">= 2.5x",
         "met": True, "note": None, "gflop_per_unit": 8.2, "precision": "fp32"},
        {"name": "rerun share", "te": 0.9, "baseline": 10.0, "unit": "s", "ratio": 0.09, "target": "<= 5%",
         "met": False, "note": "more than the target"},
    ]
    json.dump({"benchmark": "good", "rows": rows, "config": {"quick": a.quick}}, open(a.json, "w"))
''')


@pytest.fixture
def bench_dir(tmp_path):
    d = tmp_path / "benchmarks"
    d.mkdir()
    (d / "bench_good.py").write_text(SCRIPT)
    (d / "bench_crash.py").write_text("raise SystemExit('cannot find the data')\n")
    (d / "helper.py").write_text("not a benchmark\n")  # only bench_*.py scripts are benchmarks
    return d


def test_writes_results_with_machine_ceilings_and_honest_targets(te, tmp_path, bench_dir):
    out = tmp_path / "out"
    r = te("bench", "--benchmarks", str(bench_dir), "--only", "good", "--out", str(out), "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["cpu"]
    assert doc["ceilings"]["matmul_fp32_gflops"] > 0 and doc["ceilings"]["memcpy_gbps"] > 0
    rows = doc["benchmarks"][0]["rows"]
    assert [r["met"] for r in rows[:2]] == [True, False]
    derived = rows[2]  # achieved GFLOP/s from img/s x GFLOP per image, against the matmul ceiling
    assert derived["unit"] == "GFLOP/s" and derived["te"] == pytest.approx(30.0 * 8.2)
    assert doc["benchmarks"][0]["config"] == {"quick": True}  # the quick suite is the default
    md = (out / "results.md").read_text()
    assert "| good | rerun share (1) |" in md and "NOT met" in md and "| met |" in md
    assert (out / "ratios.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "results.json").read_text())["suite"] == "quick"


def test_a_crashing_benchmark_fails_the_run_and_is_named(te, tmp_path, bench_dir):
    r = te("bench", "--benchmarks", str(bench_dir), "--out", str(tmp_path / "out"))
    assert r.code == 1
    assert "1 benchmark(s) failed" in r.stderr and "Traceback" not in r.stderr
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| crash | FAILED: exit code 1: cannot find the data |" in md
    assert "| good | fast thing |" in md  # the others still ran and were reported


def test_unknown_benchmark_name_is_a_usage_error(te, tmp_path, bench_dir):
    r = te("bench", "--benchmarks", str(bench_dir), "--only", "extrct")
    assert r.code == 2
    assert r.stderr.strip() == "te: error: unknown benchmark(s) extrct; known: crash, good"
