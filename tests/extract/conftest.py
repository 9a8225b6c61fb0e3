"""Fixtures of the extraction tests: the tiny test backbone, importable in this process."""

from __future__ import annotations

import pytest


@pytest.fixture
def tiny_backbone(good_plugin_site, monkeypatch):
    """The name of `tiny_cnn` (from the installed test plugin te-test-good), registered for this test."""
    from transfer_engine.backbones import registry

    monkeypatch.syspath_prepend(str(good_plugin_site))
    registry.reload()
    yield "tiny_cnn"
    registry.reload()
