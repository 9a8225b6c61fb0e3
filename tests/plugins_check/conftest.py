"""Fixtures for `te plugins check`: every test plugin importable (the sites are tests/conftest.py's)."""

from __future__ import annotations

import os

import pytest


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
