"""One rule chooses on small data (te train's sweep and te compare): k-fold cross-validation over train+val
with an interval, a paired test for "within noise", and a recommendation that follows from both.

The synthetic case: two feature spaces of the same 256 images (4 classes). In space A, 10% of the
train images and half of the 16 val images sit at another class's mean: A is the better space, and the
tiny val split is its bad luck. In space B, 40% of train and none of val do: val flatters it. Test
says which is better (A: 90% of it is clean, B: 60%). Val alone ranks B first; the 5-fold score over
train+val ranks A first, and te compare's rule recommends A.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from transfer_engine.compare.ranking import chart_points, recommend
from transfer_engine.compare.results import Comparison, Entry
from transfer_engine.core.selection import CrossValidated
from transfer_engine.train import train

CLASSES, DIM = 4, 8
COUNTS = {"train": 160, "val": 16, "test": 80}
BAD_SHARE = {"A": {"train": 0.1, "val": 0.5, "test": 0.1}, "B": {"train": 0.4, "val": 0.0, "test": 0.4}}


def _records():
    from transfer_engine.cache import Record

    records = []
    for split, n in COUNTS.items():
        for i in range(n):
            key = hashlib.sha256(f"{split}-{i}".encode()).hexdigest()
            records.append(Record(f"{split}/{i}.png", key, i % CLASSES, split))
    return records


def _features(records, bad_share: dict[str, float], seed: int) -> torch.Tensor:
    """Class means 3 apart; the first `bad_share` of each split's images of each class sit at the next
    class's mean instead (no linear head gets them right unless it has seen them)."""
    rng = np.random.default_rng(seed)
    rows, seen = [], {}
    for r in records:
        index = seen.setdefault((r.split, r.label), [0])
        per_class = COUNTS[r.split] // CLASSES
        bad = index[0] < round(bad_share[r.split] * per_class)
        index[0] += 1
        centre = np.zeros(DIM)
        centre[(r.label + 1) % CLASSES if bad else r.label] = 3.0
        rows.append(centre + rng.normal(0, 0.5, DIM))
    return torch.tensor(np.array(rows), dtype=torch.float32)


@pytest.fixture(scope="module")
def lucky_cache(tmp_path_factory):
    """A cache with one data set and two spaces, "A" and "B" (the module docstring)."""
    from transfer_engine.cache import FeatureCache, FeatureSpace

    root = tmp_path_factory.mktemp("lucky-val")
    records = _records()
    with FeatureCache.open(root) as cache:
        for seed, name in enumerate(("A", "B")):
            space = cache.space(FeatureSpace(backbone=name, weights_digest=f"synthetic-{name}",
                                             transform={"crop_size": 8}, dim=DIM, stored="fp32"))
            space.append([r.key for r in records], _features(records, BAD_SHARE[name], seed))
        cache.put_dataset("lucky", records, [f"c{i}" for i in range(CLASSES)])
    return root


def _entry(name: str, metrics: dict, speed: float) -> Entry:
    return Entry(name, "synthetic", logme=0.0, linear_val=metrics["val_accuracy"],
                 linear_test=metrics["test_accuracy"], val_images=metrics["samples"]["val"],
                 linear_kfold=metrics["kfold"], images_per_second_batch32=speed, latency_ms_batch1=1000 / speed)


@pytest.fixture(scope="module")
def probes(lucky_cache, tmp_path_factory):
    """{(space, select): metrics of te train's swept linear probe}."""
    out = tmp_path_factory.mktemp("lucky-runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny problems: waiting threads cost more than they compute on a busy machine
    try:
        return {(name, select): train(lucky_cache, head="linear", out=out / f"{name}-{select}", backbone=name,
                                      sweep=True, select=select, progress=False).metrics
                for name in ("A", "B") for select in ("auto", "val")}
    finally:
        torch.set_num_threads(threads)


def test_where_val_luck_favours_the_worse_space_kfold_ranks_and_recommends_the_better_one(probes):
    a, b = probes[("A", "auto")], probes[("B", "auto")]
    assert b["val_accuracy"] > a["val_accuracy"]            # the tiny val split misranks them
    assert a["test_accuracy"] > b["test_accuracy"]          # test says A is better
    assert a["kfold"]["accuracy"] > b["kfold"]["accuracy"]  # and so does k-fold over train+val
    assert a["kfold"]["total"] == b["kfold"]["total"] == COUNTS["train"] + COUNTS["val"]  # never test
    low, high = a["kfold"]["interval"]
    assert low < a["kfold"]["accuracy"] < high
    # B runs five times faster, but A is not within noise of it: the recommendation is A, and says why
    verdict = recommend([_entry("A", a, 10.0), _entry("B", b, 50.0)], "kfold")
    assert (verdict.leader, verdict.chosen, verdict.tied) == ("A", "A", ())
    assert verdict.text.startswith("A: the most accurate linear probe by 5-fold cross-validation over 176 "
                                   "train+val images") and "no other backbone is within its noise" in verdict.text


def test_select_val_keeps_the_old_choice_on_val(probes):
    a, b = probes[("A", "val")], probes[("B", "val")]
    assert a["kfold"] is None and b["kfold"] is None
    assert a["hyperparameters"]["selected_by"] == "sweep on val"
    assert all(t["kfold_accuracy"] is None for t in a["sweep"])
    verdict = recommend([_entry("B", b, 50.0), _entry("A", a, 10.0)], "val")
    assert verdict.chosen == "B" and verdict.text.startswith("B: the most accurate linear probe by 16 val images")


def test_the_sweep_keeps_the_finalist_with_the_best_kfold_score(probes):
    m = probes[("A", "auto")]
    assert m["hyperparameters"]["selected_by"] == "sweep, finalists by 5-fold"
    finalists = [t for t in m["sweep"] if t["kfold_accuracy"] is not None]
    # the linear head's fits are cheap: every setting it tried is cross-validated, not the three best on val,
    # so which settings lead on a small val split cannot decide what k-fold gets to judge
    assert len(finalists) == len(m["sweep"]) > 3
    best = max(t["kfold_accuracy"] for t in finalists)
    assert m["kfold"]["accuracy"] == best
    assert m["hyperparameters"]["weight_decay"] in [t["weight_decay"] for t in finalists
                                                    if t["kfold_accuracy"] == best]
    assert m["hyperparameters"]["fitted_on"] == "train+val"


def _kfold(correct: list[bool]) -> dict:
    return CrossValidated(5, tuple(correct), (0.0,) * 5, "pool").to_dict()


def _scored(name: str, correct: list[bool], speed: float) -> Entry:
    return Entry(name, "w", logme=0.0, linear_val=0.9, val_images=50, linear_kfold=_kfold(correct),
                 images_per_second_batch32=speed, latency_ms_batch1=1000 / speed)


def test_the_recommendation_is_the_fastest_of_what_the_data_cannot_tell_from_the_best():
    best = [True] * 180 + [False] * 20
    close = [True] * 176 + [False] * 24  # 4 images fewer: p = 0.125, within noise
    worse = [True] * 140 + [False] * 60  # 40 images fewer: not
    ranked = [_scored("alpha", best, 10.0), _scored("beta", close, 30.0), _scored("gamma", worse, 90.0)]
    verdict = recommend(ranked, "kfold")
    assert (verdict.leader, verdict.tied, verdict.chosen) == ("alpha", ("beta",), "beta")
    assert verdict.text.startswith("beta: the fastest at batch 32 (fp32, 3.0x alpha's images/s) of alpha, beta, "
                                   "which 5-fold cross-validation over 200 train+val images cannot tell apart")
    assert "gamma" not in verdict.text and "alpha scored highest (90.0% [" in verdict.text
    # the leader is also the fastest of its ties: it is recommended, and the ties are named
    verdict = recommend([_scored("alpha", best, 40.0), ranked[1], ranked[2]], "kfold")
    assert verdict.chosen == "alpha" and "the fastest of those it cannot be told apart from (beta:" in verdict.text


def test_on_val_too_the_recommendation_follows_the_noise_statement():
    def entry(name, val, speed):
        return Entry(name, "w", logme=0.0, linear_val=val, val_images=285, images_per_second_batch32=speed)

    # 285 val images (the digits): 96.5% against 94.4% is 6 images, within that split's noise
    verdict = recommend([entry("alpha", 0.965, 10.0), entry("beta", 0.944, 30.0), entry("gamma", 0.80, 50.0)], "val")
    assert (verdict.tied, verdict.chosen) == (("beta",), "beta")
    assert "which 285 val images cannot tell apart (differences below 3.4 points are not significant" in verdict.text
    # the same accuracies on 10,000 val images are told apart: the leader
    far = recommend([Entry("a", "w", logme=0.0, linear_val=0.965, val_images=10_000, images_per_second_batch32=1.0),
                     Entry("b", "w", logme=0.0, linear_val=0.944, val_images=10_000, images_per_second_batch32=9.0)],
                    "val")
    assert (far.chosen, far.tied) == ("a", ())


def test_the_chart_draws_every_backbone_with_its_interval(tmp_path, monkeypatch):
    import matplotlib.axes

    from transfer_engine.compare import report

    ranked = [_scored("alpha", [True] * 180 + [False] * 20, 10.0), _scored("beta", [True] * 176 + [False] * 24, 30.0)]
    points = chart_points(ranked, "kfold")
    assert [p.backbone for p in points] == ["alpha", "beta"]
    assert all(p.low < p.y < p.high for p in points) and points[0].y == pytest.approx(90.0)
    drawn = []
    original = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, yerr=None, **kw: drawn.append((list(y), yerr)) or original(self, x, y,
                                                                                                    yerr=yerr, **kw))
    result = Comparison("d", "src", "cache", "linear probe 5-fold accuracy over train+val", ranked,
                        recommend(ranked, "kfold"), "kfold")
    report.plot(result, tmp_path / "compare.png")
    (ys, (below, above)), = drawn
    assert ys == [p.y for p in points]
    assert below == pytest.approx([p.y - p.low for p in points]) and above == pytest.approx([p.high - p.y for p in points])
    assert all(b > 0 for b in below + above)
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")
