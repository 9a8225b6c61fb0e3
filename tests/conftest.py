"""Shared fixtures: real installed test plugins, and running `te` as a user would (a subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_te(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> Result:
    """Run `python -m transfer_engine ARGS` in a fresh process and capture everything."""
    full_env = {**os.environ, **(env or {})}
    if "TE_DEBUG" not in (env or {}):
        full_env.pop("TE_DEBUG", None)  # the tests look at what users see: no tracebacks
    proc = subprocess.run(
        [sys.executable, "-m", "transfer_engine", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def install_test_plugins(target: Path, *names: str) -> Path:
    """Really install the test plugin distributions `names` (from tests/plugins) into `target`.

    Each is built from a private copy of its source: setuptools builds in the source folder (build/,
    *.egg-info), and two pytest workers building one plugin there at once could each remove the other's
    files, installing a distribution without its module.
    """
    sources = target.with_name(target.name + "-src")
    for n in names:
        shutil.copytree(TEST_PLUGINS / n, sources / n, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), *(str(sources / n) for n in names)],
        check=True, capture_output=True, text=True,
    )
    return target


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder where the test plugin distributions are really installed (pip --target)."""
    return install_test_plugins(tmp_path_factory.mktemp("plugin-site"), "te-test-good", "te-test-broken",
                                "te-test-clash")


@pytest.fixture(scope="session")
def good_plugin_site(tmp_path_factory) -> Path:
    """Only the well-behaved test plugin installed (for tests where the others would interfere)."""
    return install_test_plugins(tmp_path_factory.mktemp("good-plugin-site"), "te-test-good")


@pytest.fixture(scope="session")
def nonconforming_site(tmp_path_factory) -> Path:
    """te-test-nonconforming installed alone (it loads fine; only building its models shows the faults)."""
    return install_test_plugins(tmp_path_factory.mktemp("nonconforming-site"), "te-test-nonconforming")


@pytest.fixture(scope="session")
def faulty_site(tmp_path_factory) -> Path:
    """The plugins that misbehave without raising at import: one exits, one hangs, one's builds fail
    (te-test-faulty), beside te-test-good's tiny backbone for the runs that must still work."""
    return install_test_plugins(tmp_path_factory.mktemp("faulty-plugin-site"), "te-test-good", "te-test-exits",
                                "te-test-hangs", "te-test-faulty")


@pytest.fixture
def one_thread():
    """One compute thread for the test: on the shared 2-core CI machine two OpenMP threads run far slower
    than one once anything else is busy (small matmuls gain nothing from a second thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def with_path(site: Path) -> dict:
    """Environment that makes a `te` subprocess see the plugins installed in `site`."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="session")
def te():
    """`te(*args, env=...)` runs the CLI in a subprocess and returns (code, stdout, stderr)."""
    return run_te


@pytest.fixture(scope="session")
def faulty_env(faulty_site) -> dict:
    """Environment for a `te` subprocess that sees `faulty_site`, giving up on an import after one second."""
    return {**with_path(faulty_site), "TE_PLUGIN_IMPORT_TIMEOUT": "1"}


@pytest.fixture
def plugin_env(plugin_site):
    """Environment for a `te` subprocess that sees the good, broken and clashing test plugins."""
    return with_path(plugin_site)


def pytest_collection_modifyitems(config, items):
    import torch

    # The demo test runs for minutes. pytest-xdist hands tests out in collection order, so collected last
    # it ran alone at the suite's end while the other worker sat idle; first, it overlaps the rest.
    items.sort(key=lambda item: not item.nodeid.startswith("tests/test_demo.py::"))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
