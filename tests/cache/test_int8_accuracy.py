"""int8 storage does not cost accuracy that matters, shown on real features.

The features are those of the pretrained efficientnet_lite0 (ImageNet weights) on the first 900 images of
builtin:digits, committed as tests/cache/fixtures/digit_features_efficientnet_lite0.npz (made by
make_digit_features.py beside it; the slow test below checks the file still matches the live backbone).
They go through the cache twice, as fp32 and as int8 rows, and a linear probe is trained on each.

The probe scales features by one global constant, not per column: per-column standardization blows up
columns whose values lie below a row's int8 step (1/254 of the row's largest value), which int8 stores as
0. With sklearn's StandardScaler in front, the int8 probe scored 1.4 points *above* fp32 on these
features: the scaler had amplified noise that int8 happens to remove. Heads trained on cached int8
features should not standardize per column for the same reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transfer_engine.cache import Record

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "digit_features_efficientnet_lite0.npz"
FOLDS = 5


@pytest.fixture(scope="module")
def real_features():
    data = np.load(FIXTURE)
    return torch.from_numpy(data["features"]), torch.from_numpy(data["labels"]), data


def _probe_predictions(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Out-of-fold predictions of multinomial logistic regression (5 stratified folds, 150 Adam steps)."""
    from sklearn.model_selection import StratifiedKFold

    scale = float(features.std())
    preds = torch.empty_like(labels)
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(features.numpy(), labels.numpy())
    for train, test in folds:
        train, test = torch.from_numpy(train), torch.from_numpy(test)
        w = torch.zeros(features.shape[1], int(labels.max()) + 1, requires_grad=True)
        b = torch.zeros(w.shape[1], requires_grad=True)
        opt = torch.optim.Adam([w, b], lr=0.1)
        x = features[train] / scale
        for _ in range(150):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w + b, labels[train]) + 1e-3 * (w * w).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            preds[test] = ((features[test] / scale) @ w + b).argmax(1)
    return preds


def test_int8_rows_keep_cosine_and_linear_probe_accuracy_of_fp32(new_cache, real_features, one_thread):
    features, labels, _ = real_features
    keys = [f"{i:064x}" for i in range(len(labels))]
    cache = new_cache()
    cache.put_dataset("digits", [Record(f"digit{i}", k, int(labels[i]), "train") for i, k in enumerate(keys)],
                      [str(d) for d in range(10)])
    decoded = {}
    for stored in ("fp32", "int8"):
        space = cache.space(backbone="efficientnet_lite0", weights_digest="fixture", transform={}, dim=1280,
                            stored=stored)
        space.append(keys, features)
        decoded[stored] = torch.cat([b.features for b in space.batches(dataset="digits", shuffle=False)])
    assert torch.equal(decoded["fp32"], features)

    cosine = torch.nn.functional.cosine_similarity(decoded["int8"], features, dim=1)
    assert cosine.min() >= 0.999, f"row {int(cosine.argmin())} has cosine {float(cosine.min()):.5f}"

    pred_fp32 = _probe_predictions(decoded["fp32"], labels)
    pred_int8 = _probe_predictions(decoded["int8"], labels)
    acc_fp32 = (pred_fp32 == labels).double().mean().item() * 100
    acc_int8 = (pred_int8 == labels).double().mean().item() * 100
    assert acc_fp32 > 85, f"the probe itself should work on these features (got {acc_fp32:.1f}%)"
    assert abs(acc_int8 - acc_fp32) <= 0.5, f"int8 {acc_int8:.2f}% vs fp32 {acc_fp32:.2f}%"
    assert (pred_fp32 == pred_int8).double().mean() >= 0.98


@pytest.mark.slow
def test_the_fixture_still_matches_the_live_backbone(real_features):
    from transfer_engine.backbones import create_backbone, list_backbones
    from transfer_engine.data import load_builtin

    if "efficientnet_lite0" not in list_backbones():
        pytest.skip("the te-efficientnet-lite plugin is not installed")
    features, _, data = real_features
    backbone = create_backbone("efficientnet_lite0")
    assert backbone.weights_digest == str(data["weights_digest"])
    digits, transform = load_builtin("builtin:digits"), backbone.transform()
    live = backbone(torch.stack([transform(digits.pil(i)) for i in range(8)]))
    assert torch.nn.functional.cosine_similarity(live, features[:8], dim=1).min() > 0.9999
