"""Fixtures for `te plugins check`: the test plugin distributions, really installed (pip --target)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TEST_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture(scope="session")
def nonconforming_site(tmp_path_factory) -> Path:
    """te-test-nonconforming installed alone (it loads fine; only building its models shows the faults)."""
    target = tmp_path_factory.mktemp("nonconforming-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), str(TEST_PLUGINS / "te-test-nonconforming")],
        check=True, capture_output=True, text=True,
    )
    return target


@pytest.fixture
def all_test_plugins(plugin_site, nonconforming_site, tmp_path) -> dict:
    """Environment for a `te` subprocess seeing every test plugin, with its own verdict memo."""
    path = os.pathsep.join(filter(None, [str(nonconforming_site), str(plugin_site), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path, "XDG_CACHE_HOME": str(tmp_path / "xdg")}


@pytest.fixture
def test_plugins_importable(monkeypatch, plugin_site, nonconforming_site):
    """Make the test plugins importable in this process, for check_plugin() called directly.

    te's global registries are loaded first, without them: `te plugins check` reads entry points itself,
    and a registry that had cached the clashing test plugin would break later tests that use resnet50.
    """
    from transfer_engine.backbones import registry as backbones
    from transfer_engine.heads import registry as heads

    backbones.names(), heads.names()
    monkeypatch.syspath_prepend(str(plugin_site))
    monkeypatch.syspath_prepend(str(nonconforming_site))
