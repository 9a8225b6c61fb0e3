"""The int8 gate is a statement with 95% confidence, not a point estimate: how many images it rests on
decides as much as how many of them agree."""

from __future__ import annotations

import math

import pytest

from transfer_engine.export.gate import AgreementGate, Z95_ONE_SIDED


def test_every_image_agreeing_proves_99_percent_only_from_268_images():
    gate = AgreementGate(0.99)
    # with every image agreeing the one-sided Wilson bound is n / (n + z^2)
    assert gate.lower_bound(267, 267) == pytest.approx(267 / (267 + Z95_ONE_SIDED**2))
    assert not gate.passes(267, 267) and gate.passes(268, 268)
    assert gate.images_needed(1.0) == 268 and not gate.supported_by(267) and gate.supported_by(268)


def test_one_image_in_a_hundred_is_not_99_percent():
    # the old gate: 99 of 100 check images met 99%; its evidence supports only about 95.6%
    gate = AgreementGate(0.99)
    assert not gate.passes(99, 100) and gate.lower_bound(99, 100) == pytest.approx(0.9564, abs=1e-4)
    assert gate.describe(99, 100) == "99.0% (99 of 100 images; 95% lower bound 95.6%)"


def test_the_same_rate_passes_on_more_images_and_the_count_needed_is_the_least():
    gate = AgreementGate(0.99)
    assert not gate.passes(995, 1000) and gate.passes(997, 1000)  # 99.5% needs more images than 1,000
    needed = gate.images_needed(0.995)
    assert gate.lower_bound(math.floor(0.995 * needed), needed) >= 0.99
    assert gate.lower_bound(math.floor(0.995 * (needed - 1)), needed - 1) < 0.99
    assert gate.images_needed(0.99) is None and gate.images_needed(0.9) is None  # not above the floor: never


def test_the_edges_no_images_no_agreement_and_a_floor_of_one():
    gate = AgreementGate(0.99)
    assert gate.lower_bound(0, 0) == 0.0 and not gate.passes(0, 0)
    assert gate.lower_bound(0, 500) == 0.0
    assert 0.0 < gate.lower_bound(1, 1) < 1.0
    exact = AgreementGate(1.0)  # 100% can never be shown on a finite sample
    assert exact.images_needed(1.0) is None and not exact.passes(10**6, 10**6)
    assert "can never be shown" in exact.too_few(10**6)
    verdict = gate.verdict(997, 1000)
    assert verdict["passed"] and verdict["agreement"] == 0.997 and verdict["images"] == 1000
    assert verdict["lower_bound"] < verdict["agreement"]
