"""Every benchmarks/bench_*.py script runs the way te bench runs it (`--quick --json PATH`, through te bench's
own `run_script`), at the smoke sizes TE_BENCH_SMOKE=1 asks for, and writes rows of the contract's shape: a
script that no longer runs fails the tests, not the lead's `make bench`.

The four cheap ones run in `make test` (about 10 s of CPU together); the ones that build and run real
models (extract, export, int8, compare, finetune, finetune_domains, train_step: 30-90 s of CPU each on two
cores) are marked slow and run in `make test-all`.
"""

from __future__ import annotations

import pytest

from transfer_engine.bench.runner import SMOKE_ENV, find_benchmarks, run_script

SCRIPTS = find_benchmarks()
SLOW = {"extract", "export", "int8", "compare", "finetune", "finetune_domains", "train_step", "lora", "doctor"}
FIELDS = {"name", "te", "baseline", "unit", "ratio", "target", "met", "note"}


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name


@pytest.mark.parametrize("name", [_param(n) for n in SCRIPTS])
def test_script_runs_at_smoke_size_and_writes_contract_rows(name, monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    printed: list[str] = []
    result = run_script(name, SCRIPTS[name], quick=True, timeout=600, say=printed.append)
    assert result.error is None, f"{result.error}\n" + "\n".join(printed[-40:])
    assert result.rows, "no rows"
    for row in result.rows:
        assert FIELDS <= row.keys(), row
        assert isinstance(row["name"], str) and row["name"]
        assert isinstance(row["te"], (int, float)) and isinstance(row["baseline"], (int, float)), row
        assert row["ratio"] is None or isinstance(row["ratio"], (int, float)), row
        assert row["met"] in (None, True, False) and (row["target"] is not None or row["met"] is None), row
    assert result.config.get("smoke") is True  # the script saw the smoke switch and said so


def test_the_slow_list_names_only_existing_scripts():
    # The parametrization is te bench's own discovery; a renamed heavy script must not slip into make test.
    assert SLOW <= set(SCRIPTS), f"SLOW names scripts that no longer exist: {sorted(SLOW - set(SCRIPTS))}"
