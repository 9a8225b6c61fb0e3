"""What `train()` leaves behind is a complete run directory that the later steps can use as it is."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from transfer_engine.cache import FeatureCache
from transfer_engine.errors import WeightsError
from transfer_engine.runs import HEAD_WEIGHTS, METRICS_JSON, RUN_JSON, Run
from transfer_engine.train import LEADERBOARD_JSON, train, train_all

from .conftest import FIXTURE, fill_cache

PNG = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = {"train_accuracy", "val_accuracy", "test_accuracy", "per_class_recall", "macro_f1", "hyperparameters",
               "seconds"}


def _test_split(cache_dir, space):
    with FeatureCache.open(cache_dir, create=False) as cache:
        ds = cache.dataset("digits")
        return cache.open_space(space).gather(ds.keys("test")), torch.tensor(ds.labels("test"))


def test_no_refit_keeps_the_sweeps_fit_on_train_so_val_stays_unseen(digit_cache, tmp_path):
    # --no-refit: the run holds the chosen setting's fit on train, so te export can judge int8 on val and te
    # finetune can keep its start; the run records it, and the saved head scores on val what metrics.json says
    result = train(digit_cache, head="linear", out=tmp_path / "linear", sweep=True, refit=False, progress=False)
    metrics = result.metrics
    assert metrics["hyperparameters"]["fitted_on"] == "train"
    run = Run.open(result.run)
    assert run.val_was_fitted() is False
    with FeatureCache.open(digit_cache, create=False) as cache:
        ds = cache.dataset("digits")
        x, y = cache.open_space(metrics["space"]).gather(ds.keys("val")), torch.tensor(ds.labels("val"))
    with torch.no_grad():
        predicted = run.build_head()(x).argmax(1)
    assert float((predicted == y).double().mean()) == metrics["val_accuracy"]
    refitted = train(digit_cache, head="linear", out=tmp_path / "refitted", sweep=True, progress=False)
    assert Run.open(refitted.run).val_was_fitted() is True  # the default refits on train+val


def test_a_swept_run_holds_weights_provenance_metrics_and_pictures(digit_cache, tmp_path):
    from sklearn.metrics import f1_score, recall_score

    result = train(digit_cache, head="knn", out=tmp_path / "knn", sweep=True, progress=False)
    names = {p.name for p in result.run.iterdir()}
    assert {HEAD_WEIGHTS, RUN_JSON, METRICS_JSON, "learning_curve.png", "confusion_matrix.png", "sweep.png"} <= names
    for picture in ("learning_curve.png", "confusion_matrix.png", "sweep.png"):
        assert (result.run / picture).read_bytes().startswith(PNG)
    assert not list(tmp_path.glob(".knn.partial-*"))

    metrics = json.loads((result.run / METRICS_JSON).read_text())
    assert metrics == json.loads(json.dumps(result.metrics))
    assert METRIC_KEYS <= set(metrics)
    hp = metrics["hyperparameters"]
    # 765 train+val digits: small data, so the sweep's finalists on val are judged by 5-fold over train+val
    assert hp["selected_by"] == "sweep, finalists by 5-fold" and hp["fitted_on"] == "train+val"
    assert hp["options"]["k"] in {t["options"]["k"] for t in metrics["sweep"]}
    assert {t["stage"] for t in metrics["sweep"]} >= {"options"}
    chosen = next(t for t in metrics["sweep"] if t["options"] == hp["options"])
    assert chosen["kfold_accuracy"] == metrics["kfold"]["accuracy"] == max(
        t["kfold_accuracy"] for t in metrics["sweep"] if t["kfold_accuracy"] is not None)
    assert chosen["val_accuracy"] == metrics["val_accuracy"]  # val stays the held-out score of the fit on train
    assert metrics["kfold"]["total"] == metrics["samples"]["train"] + metrics["samples"]["val"]

    run = Run.open(result.run)
    assert run.info.kind == "train" and run.info.head.name == "knn"
    assert run.info.backbone.name == "efficientnet_lite0"
    assert run.info.backbone.weights == str(np.load(FIXTURE)["weights"])
    assert run.info.class_names == [str(d) for d in range(10)]
    assert run.info.dataset["name"] == "digits" and run.info.dataset["data"] == "builtin:digits"
    assert run.info.dataset["splits"] == metrics["samples"]
    assert run.info.space["id"] == metrics["space"] and run.info.preprocess["crop_size"] == 224
    assert run.info.versions["torch"] and run.info.seed == 0

    # The saved head, rebuilt the way te export and te finetune rebuild it, scores what metrics.json says.
    x, y = _test_split(digit_cache, metrics["space"])
    with torch.no_grad():
        predicted = run.build_head()(x).argmax(1)
    assert float((predicted == y).double().mean()) == metrics["test_accuracy"]
    assert metrics["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"), abs=1e-9)
    recall = recall_score(y, predicted, average=None)
    assert [metrics["per_class_recall"][str(c)] for c in range(10)] == pytest.approx(list(recall), abs=1e-9)


def test_the_run_rebuilds_backbone_and_head_into_one_model_for_images(digit_cache, tmp_path):
    """`te export` calls Run.build_model(): the pretrained backbone (digest checked) plus the head,
    images in, the head's predictions out."""
    from transfer_engine.data import load_builtin

    result = train(digit_cache, head="linear", out=tmp_path / "linear", progress=False)
    run = Run.open(result.run)
    model = run.build_model()
    digits = load_builtin("builtin:digits")
    transform = run.preprocess.transform()  # the preprocessing recorded in run.json
    images = torch.stack([transform(digits.pil(i)) for i in range(6)])
    features = torch.from_numpy(np.load(FIXTURE)["features"][:6])
    with torch.no_grad():
        from_images = model(images)
        from_features = run.build_head()(features)
    assert torch.equal(from_images.argmax(1), from_features.argmax(1))
    assert torch.allclose(from_images, from_features, atol=1e-2, rtol=1e-3)


def test_every_head_and_a_leaderboard(digit_cache, tmp_path):
    board = train_all(digit_cache, out=tmp_path / "all", epochs=3, progress=False)
    heads = [r.head for r in board]
    assert {"linear", "mlp", "cosine", "knn"} <= set(heads)
    # small data: the heads are ranked by 5-fold accuracy over train+val, shown with its interval
    accuracies = [r.metrics["kfold"]["accuracy"] for r in board]
    assert accuracies == sorted(accuracies, reverse=True)
    saved = json.loads((tmp_path / "all" / LEADERBOARD_JSON).read_text())
    assert [row["head"] for row in saved["leaderboard"]] == heads and saved["best"] == heads[0]
    assert saved["selected_by"] == "kfold"
    for row in saved["leaderboard"]:
        low, high = row["kfold_interval"]
        assert low <= row["kfold_accuracy"] <= high and row["val_accuracy"] is not None
    tied = board.tied_with_best()
    assert [row["within_noise_of_best"] for row in saved["leaderboard"]] == [None] + [h in tied for h in heads[1:]]
    for r in board:
        assert r.run == tmp_path / "all" / r.head and Run.open(r.run).info.head.name == r.head


def test_a_space_without_provenance_trains_but_says_its_backbone_cannot_be_rebuilt(digit_features, tmp_path):
    fill_cache(tmp_path / "cache", digit_features[0], provenance=False)
    result = train(tmp_path / "cache", head="linear", out=tmp_path / "run", progress=False)
    assert result.metrics["exportable"] is False and result.metrics["test_accuracy"] > 0.9
    run = Run.open(result.run)
    assert run.info.backbone.weights == "unrecorded"
    run.build_head()  # the head itself is fine
    with pytest.raises(WeightsError, match="does not record which 'efficientnet_lite0' weights"):
        run.build_backbone()


def test_progress_given_a_function_hands_it_every_line_and_leaves_stderr_alone(digit_cache, tmp_path, capsys):
    lines: list[str] = []
    result = train(digit_cache, head="linear", out=tmp_path / "linear", progress=lines.append)
    assert capsys.readouterr().err == ""
    assert any(line.startswith("train linear on digits") for line in lines)
    assert lines[-1].startswith("linear: train ") and lines[-1].endswith(f"-> {result.run}")
