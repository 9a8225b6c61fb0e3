"""Loading of transfer_engine._C: used when built, an honest fallback when not."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from transfer_engine import extension


def test_extension_is_built_and_registers_its_ops():
    import torch

    info = extension.info()
    assert info["available"], info["error"]
    assert info["openmp_max_threads"] >= 1
    assert hasattr(torch.ops.te, "quantize_rows_int8")


# Python treats a None entry in sys.modules as "this module cannot be imported": exactly what a user
# without a build sees (an editable install would otherwise still find the built library).
BLOCK = "import sys; sys.modules['transfer_engine._C'] = None\n"

SNIPPET = BLOCK + """
import torch
from transfer_engine import ops, extension
x = torch.randn(6, 10)
q, s = ops.quantize_rows_int8(x)
q2, s2 = ops.quantize_rows_int8(x)
ref = ops.reference.quantize_rows_int8(x)
assert torch.equal(q, ref[0]) and torch.equal(s, ref[1])
print("fallback ok", extension.available())
"""


def run_python(code: str, require: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("TE_REQUIRE_EXT", None)
    if require:
        env["TE_REQUIRE_EXT"] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_missing_extension_falls_back_with_one_warning():
    proc = run_python(SNIPPET, require=False)
    assert proc.returncode == 0, proc.stderr
    assert "fallback ok False" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines() if "transfer_engine._C is unavailable" in line]
    assert len(warnings) == 1  # two calls, one warning
    assert "pip install --no-build-isolation -e ." in warnings[0]


def test_missing_extension_is_an_error_when_required():
    proc = run_python(SNIPPET, require=True)
    assert proc.returncode != 0
    assert "ExtensionError" in proc.stderr
    assert "TE_REQUIRE_EXT=1" in proc.stderr and "pip install --no-build-isolation -e ." in proc.stderr
    assert "ImportError" in proc.stderr or "ModuleNotFoundError" in proc.stderr  # the cause is named


def test_te_info_reports_the_missing_extension():
    proc = run_python(BLOCK + "from transfer_engine.cli.main import main; sys.exit(main(['info']))", require=False)
    assert proc.returncode == 0, proc.stderr
    assert "NOT available" in proc.stdout


def test_the_extension_loads_without_torch_imported_first():
    # An rpath to torch's lib folder: `import transfer_engine._C` alone finds libc10/libtorch.
    code = ("import sys; import transfer_engine._C as c; "
            "print('loaded', 'torch' in sys.modules, c.__file__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("loaded"), r.stderr[-2000:]
