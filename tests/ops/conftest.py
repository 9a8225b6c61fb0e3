"""What every op test shares: the devices a kernel is compared on, and skipping when _C is not built.

Whether the build exists at all is tests/test_extension.py's concern (and `make test` sets
TE_REQUIRE_EXT=1); the op tests compare kernels with the reference and need the kernels.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer_engine import extension

HERE = Path(__file__).resolve().parent

if extension.available():
    extension.load()  # registers torch.ops.te.*


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request) -> str:
    """Runs the test on the CPU and on a CUDA device (skipped without one, see tests/conftest.py)."""
    return request.param


def pytest_collection_modifyitems(config, items):
    if extension.available():
        return
    skip = pytest.mark.skip(reason="transfer_engine._C is not built")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)
