"""The selection rule on small data (transfer_engine/core/selection.py): the folds te cross-validates on are
stratified, the same on every run, built from train+val only, and the interval and the paired test say
what a statistician would."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from transfer_engine.core.configs import TrainConfig
from transfer_engine.core.selection import (KFOLD_MAX_RECORDS, CrossValidated, assign_folds, mcnemar_p,
                                            resolve_selection, wilson_interval)
from transfer_engine.errors import UsageError

from .conftest import digit_records


def test_folds_are_stratified_by_class_and_the_same_on_every_run():
    records, _ = digit_records()
    pool = [r for r in records if r.split in ("train", "val")]
    folds = assign_folds(pool, 5)
    for label in {r.label for r in pool}:
        sizes = Counter(f for r, f in zip(pool, folds) if r.label == label)
        assert set(sizes) == set(range(5)) and max(sizes.values()) - min(sizes.values()) <= 1
    # another order of the same records (another machine's listing): every image keeps its fold
    shuffled = pool[:]
    random.Random(1).shuffle(shuffled)
    again = dict(zip((r.key for r in shuffled), assign_folds(shuffled, 5)))
    assert all(again[r.key] == f for r, f in zip(pool, folds))


def test_the_folds_pool_train_and_val_and_never_hold_a_test_image(digit_cache):
    from transfer_engine.train.crossval import FoldPlan
    from transfer_engine.train.data import load_training_data

    data = load_training_data(digit_cache)
    try:
        plan = FoldPlan.of(data, 5)
        assert plan.pool.keys == data.splits["train"].keys + data.splits["val"].keys
        assert not set(plan.pool.keys) & set(data.splits["test"].keys)
        held = []
        for f in range(5):
            fit_rows, fold = plan.split(f)
            assert not set(fit_rows.keys) & set(fold.keys)
            assert len(fit_rows) + len(fold) == len(plan.pool)
            assert fold.features.shape == (len(fold), data.dim)
            held += fold.keys
        assert sorted(held) == sorted(plan.pool.keys)  # every pooled image is held out exactly once
    finally:
        data.close()


def test_copies_of_one_image_share_a_fold():
    class Row:
        def __init__(self, key, label):
            self.key, self.label = key, label

    pool = [Row(f"{i:064x}", i % 2) for i in range(20)] + [Row(f"{3:064x}", 1)]  # image 3 again, another label
    folds = assign_folds(pool, 4)
    assert folds[3] == folds[-1]


def test_more_folds_than_images_is_a_clear_error():
    class Row:
        def __init__(self, key, label):
            self.key, self.label = key, label

    with pytest.raises(UsageError, match="needs at least 5 distinct train\\+val images, the data set has 3"):
        assign_folds([Row("a", 0), Row("b", 1), Row("c", 0)], 5)


def test_the_interval_and_the_paired_test_agree_with_scipy():
    from scipy.stats import binomtest

    low, high = wilson_interval(95, 100)
    assert low < 0.95 < high <= 1 and (low, high) == pytest.approx((0.8882, 0.9785), abs=1e-4)
    assert wilson_interval(100, 100)[1] == 1.0 and wilson_interval(100, 100)[0] > 0.96
    a = [True] * 80 + [True] * 9 + [False] * 2 + [False] * 9
    b = [True] * 80 + [False] * 9 + [True] * 2 + [False] * 9
    assert mcnemar_p(a, b) == pytest.approx(binomtest(2, 11, 0.5).pvalue)  # 9 against 2 discordant images
    assert mcnemar_p(a, a) == 1.0
    one, other = (CrossValidated(5, tuple(x), (0.0,) * 5, "pool") for x in (a, b))
    assert one.within_noise(other) == (mcnemar_p(a, b) >= 0.05)
    assert CrossValidated.from_dict(one.to_dict()) == one  # what metrics.json and compare.json carry


def test_auto_cross_validates_small_data_and_keeps_val_on_large():
    assert resolve_selection("auto", KFOLD_MAX_RECORDS) == "kfold"
    assert resolve_selection("auto", KFOLD_MAX_RECORDS + 1) == "val"
    assert resolve_selection("kfold", 10 * KFOLD_MAX_RECORDS) == "kfold"
    assert resolve_selection("val", 10) == "val"
    with pytest.raises(UsageError, match="--folds must be at least 2"):
        TrainConfig(cache="c", folds=1)
    with pytest.raises(UsageError, match="--select must be one of auto, kfold, val"):
        TrainConfig(cache="c", select="cv")


def test_a_bad_select_on_the_command_line_is_one_line_and_exit_2(te, tmp_path):
    r = te("train", "--cache", str(tmp_path), "--head", "linear", "--out", str(tmp_path / "run"), "--select", "cv")
    assert r.code == 2 and "--select" in r.stderr and "Traceback" not in r.stderr
