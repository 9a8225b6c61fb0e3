"""`te finetune --from RUN` as users run it: warm-started from a linear run (LP-FT), the starting
accuracy reproduces the linear run's (the image pipeline matches the cache path), the output run is
what `te export` reads, and mistakes are one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import ONE_THREAD
from linear_run import make_linear_run

from transfer_engine.core.runtime import torch_threads
from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune
from transfer_engine.runs import Run


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A linear head on random-init ResNet-18 features of 200 real digits at 32 px (cached, L-BFGS)."""
    with torch_threads(1):
        return make_linear_run(tmp_path_factory.mktemp("lin"), "resnet18", weights="none", input_size=32, limit=200)


def test_lp_ft_from_a_linear_run_starts_where_it_ended_and_keeps_the_best_on_val(te, tmp_path, linear):
    parent = Run.open(linear)
    r = te("finetune", "--from", str(linear), "--out", str(tmp_path / "ft"), "--epochs", "2", "--batch-size", "16",
           "--augment", "none", env=ONE_THREAD)
    assert r.code == 0, r.stderr
    run = Run.open(tmp_path / "ft")
    m = run.metrics
    n_test = parent.info.dataset["splits"]["test"]
    # The starting model through te finetune's image pipeline = the linear head on the cached features.
    assert abs(m["before"]["test_accuracy"] - parent.metrics["test_accuracy"]) <= 1 / n_test
    assert m["parent"]["test_accuracy"] == parent.metrics["test_accuracy"]
    # What LP-FT guarantees, on any CPU: the kept weights are the best on val (the start counts; a tie
    # of accuracy goes to the lower val loss), so keeping the start means reproducing its test accuracy
    # exactly. Whether 2 epochs on these few digits beat the start is not a guarantee (it differs
    # between CPU families).
    vals = [(m["before"]["val_accuracy"], m["before"]["val_loss"])] + [(e["val_accuracy"], e["val_loss"])
                                                                       for e in m["epochs"]]
    top = max(acc for acc, _ in vals)
    kept_acc, kept_loss = vals[m["best_epoch"]]
    assert kept_acc == top and kept_loss <= min(loss for acc, loss in vals if acc == top) + 1e-4
    if m["best_epoch"] == 0:
        assert m["test_accuracy"] == m["before"]["test_accuracy"]
    else:
        assert m["val_accuracy"] == top and (top > vals[0][0] or kept_loss < vals[0][1])  # it beat the start
    assert len(m["epochs"]) == 2 and m["epochs"][0]["trainable_backbone_blocks"] == 10  # no_freeze: LP-FT
    # the report shows both: the linear run's accuracy and the fine-tuned one
    assert f"{100 * m['test_accuracy']:.1f}% after" in r.stdout
    assert f"reported test accuracy {100 * parent.metrics['test_accuracy']:.1f}%" in r.stdout

    assert run.info.kind == "finetune" and run.info.parent == str(linear)
    assert run.preprocess.crop_size == 32 and run.class_names == parent.class_names
    assert run.info.dataset["cache"] == parent.info.dataset["cache"]
    assert all((run.path / png).stat().st_size > 0 for png in ("learning_curve.png", "confusion_matrix.png"))
    model = run.build_model()  # what te export builds: backbone.* and head.* from model.safetensors
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert model(x).shape == (2, 10)
        assert torch.equal(model(x), model.head(run.build_backbone().model(x)))

    again = te("finetune", "--from", str(linear), "--out", str(tmp_path / "ft"))
    assert again.code == 2 and again.stderr.strip().count("\n") == 0 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr


@pytest.mark.parametrize("kwargs,message", [
    ({}, "either --from RUN or --backbone"),
    ({"backbone": "resnet18", "data": "builtin:digits"}, "--head"),
    ({"from_run_dir": "{tmp}/nope"}, "does not exist"),
    ({"backbone": "resnt18", "data": "builtin:digits", "head": "linear"}, "did you mean"),
    ({"backbone": "resnet18", "data": "builtin:digits", "head": "linear", "batch_size": 5000}, "larger than"),
    ({"backbone": "resnet18", "data": "builtin:digits", "head": "linear", "strategy": "unfreeze_milestones"},
     "needs --milestones"),
    ({"backbone": "resnet18", "data": "builtin:digits", "head": "linear", "precision": "fp16", "device": "cpu"},
     "needs a CUDA device"),
    ({"backbone": "resnet18", "data": "builtin:digits", "head": "linear", "out": "{tmp}/taken"}, "is a file"),
])
def test_mistakes_are_usage_errors_before_any_training(tmp_path, kwargs, message):
    (tmp_path / "taken").write_text("mine")
    kwargs = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in kwargs.items()}
    out = kwargs.pop("out", tmp_path / "out")
    with pytest.raises(UsageError, match=message):
        finetune(out, weights="none", limit=100, progress=False, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing written, nothing staged
    assert (tmp_path / "taken").read_text() == "mine"


def test_images_through_the_fine_tuning_pipeline_give_the_cached_features(linear, one_thread):
    """What `freeze` trains on: the backbone recomputing features from the images, each step; they must
    be the features the head was fitted on (same records, same preprocessing), not a near miss."""
    from transfer_engine.cache import FeatureCache
    from transfer_engine.data.sources import open_source
    from transfer_engine.finetune.data import ImageSet, items_from_records

    run = Run.open(linear)
    with FeatureCache.open(run.info.dataset["cache"], create=False) as cache:
        records = cache.dataset(run.info.dataset["name"]).records
        test = [r for r in records if r.split == "test"]
        cached = cache.open_space(run.info.space["id"]).gather([r.key for r in test])
    items = [it for it in items_from_records(open_source(run.info.dataset["data"]), records) if it.split == "test"]
    assert [it.key for it in items] == [r.key for r in test] and [it.label for it in items] == [r.label for r in test]
    images = ImageSet(open_source(run.info.dataset["data"]), items, run.preprocess, "crop+flip")
    x = torch.stack([images[(i, None)][0] for i in range(len(items))])  # no seed: the eval transform
    with torch.inference_mode():
        recomputed = run.build_backbone().model(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(recomputed, cached, rtol=1e-4, atol=1e-5)


def test_a_start_whose_head_saw_val_cannot_win_the_selection_on_val(tmp_path, linear, one_thread):
    # te train --sweep refits the chosen head on train+val (metrics.json says so): its val accuracy is
    # in-sample, and keeping it as "best" would throw away any fine-tuning, however good.
    parent = tmp_path / "swept"
    shutil.copytree(linear, parent)
    metrics = json.loads((parent / "metrics.json").read_text())
    metrics.setdefault("hyperparameters", {})["fitted_on"] = "train+val"
    (parent / "metrics.json").write_text(json.dumps(metrics))
    summary = finetune(tmp_path / "ft", from_run_dir=parent, epochs=1, lr=1e-7, batch_size=16, augment="none",
                       progress=False)
    m = Run.open(tmp_path / "ft").metrics
    assert m["best_epoch"] == 1  # the fine-tuned weights are kept, even after a useless lr
    assert summary.test_accuracy == m["test_accuracy"]
