"""A run directory appears complete or not at all, refuses to clobber another run, and rebuilds its model."""

from __future__ import annotations

import json

import pytest
import torch

from transfer_engine.errors import UsageError, WeightsError
from transfer_engine.heads import create_head
from transfer_engine.runs import HEAD_WEIGHTS, METRICS_JSON, RUN_JSON, BackboneRef, HeadRef, Run, RunInfo, RunWriter


def _info(bb_ref: BackboneRef, classes=("a", "b", "c")) -> RunInfo:
    return RunInfo(kind="train", backbone=bb_ref, preprocess={"crop_size": 224, "resize_size": 256},
                   head=HeadRef("linear", bb_ref.feature_dim, len(classes)), class_names=list(classes),
                   weights_file=HEAD_WEIGHTS, seed=3)


@pytest.fixture(scope="module")
def backbone():
    from transfer_engine.backbones import create_backbone

    return create_backbone("mobilenet_v3_small", weights="none", seed=5)


def _write(out, backbone, overwrite=False, fail=False):
    ref = BackboneRef.of(backbone)
    head = create_head("linear", ref.feature_dim, 3)
    with RunWriter(out, overwrite=overwrite) as w:
        w.save_tensors(HEAD_WEIGHTS, head.state_dict())
        w.write_json(METRICS_JSON, {"train_accuracy": 1.0, "val_accuracy": 0.5, "test_accuracy": None})
        if fail:
            raise RuntimeError("training blew up")
        w.write_json(RUN_JSON, _info(ref).to_dict())
    return head


def test_a_finished_run_rebuilds_backbone_and_head_exactly(tmp_path, backbone):
    head = _write(tmp_path / "run", backbone)
    run = Run.open(tmp_path / "run")
    assert run.metrics["val_accuracy"] == 0.5 and run.class_names == ["a", "b", "c"]
    model = run.build_model()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = head(backbone.model.eval()(x))
        assert torch.equal(model(x), expected)


def test_a_failed_run_leaves_nothing_that_looks_finished(tmp_path, backbone):
    with pytest.raises(RuntimeError):
        _write(tmp_path / "run", backbone, fail=True)
    assert not (tmp_path / "run").exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind either



def test_a_writer_finished_inside_its_block_is_left_as_it_is(tmp_path, backbone):
    """te train --head all enters every head's writer into one stack: a head that failed was aborted in
    its own block, so the end of the stack must not try to commit it (nor abort one committed)."""
    with RunWriter(tmp_path / "failed") as w:
        w.abort()
    assert list(tmp_path.iterdir()) == []
    with RunWriter(tmp_path / "done") as w:
        w.write_json(RUN_JSON, {"format": "x"})
        w.commit()
    assert (tmp_path / "done" / RUN_JSON).is_file()
    with pytest.raises(KeyboardInterrupt):
        with RunWriter(tmp_path / "interrupted"):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]

def test_out_holding_another_run_is_refused_unless_overwrite(tmp_path, backbone):
    _write(tmp_path / "run", backbone)
    before = (tmp_path / "run" / RUN_JSON).read_text()
    with pytest.raises(UsageError, match="already holds a run.*--overwrite"):
        RunWriter(tmp_path / "run")
    assert (tmp_path / "run" / RUN_JSON).read_text() == before
    _write(tmp_path / "run", backbone, overwrite=True)
    assert Run.open(tmp_path / "run").info.seed == 3


def test_out_that_is_a_foreign_folder_is_refused(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a te run"):
        RunWriter(tmp_path / "photos", overwrite=True)
    assert (tmp_path / "photos" / "cat.jpg").exists()


def test_open_explains_what_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        Run.open(tmp_path / "nope")
    with pytest.raises(UsageError, match="no run.json"):
        Run.open(tmp_path)
    (tmp_path / RUN_JSON).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(UsageError, match="not a te run description"):
        Run.open(tmp_path)


def test_changed_backbone_weights_are_detected(tmp_path, backbone):
    _write(tmp_path / "run", backbone)
    info = json.loads((tmp_path / "run" / RUN_JSON).read_text())
    info["backbone"]["seed"] = 6  # the run now claims other weights than those it was trained on
    (tmp_path / "run" / RUN_JSON).write_text(json.dumps(info))
    with pytest.raises(WeightsError, match="other weights"):
        Run.open(tmp_path / "run").build_backbone()


def test_a_run_reads_back_the_records_it_was_trained_on_or_says_why_not(tmp_path, backbone):
    import dataclasses
    import shutil

    from transfer_engine.cache import FeatureCache, Record

    with FeatureCache.open(tmp_path / "feats") as cache:
        cache.put_dataset("d", [Record(f"img{i}.png", f"{i:064x}", i % 3, "train") for i in range(5)],
                          ["a", "b", "c"])
        stored = cache.dataset("d").records
    _write(tmp_path / "run", backbone)
    run = Run.open(tmp_path / "run")
    run.info = dataclasses.replace(run.info, dataset={"cache": str(tmp_path / "feats"), "name": "d", "data": "x"})
    assert run.cached_records() == (stored, "")

    shutil.rmtree(tmp_path / "feats")  # moved away: te finetune refuses, te export derives splits and says so
    records, why = run.cached_records()
    assert records is None and "data set 'd' of the cache" in why and "does not exist" in why


def _write_chain(tmp_path, backbone, first_fitted_on: str, recorded: bool) -> Run:
    """A te train run fitted on `first_fitted_on`, a te finetune run --from it, and a second --from the first
    (te demo's QAT epoch after its fine-tune); `recorded`: each fine-tune's metrics carry what its start was
    fitted on (te since 2026-12-07), else only the path of its --from run (an older run)."""
    from dataclasses import replace

    ref = BackboneRef.of(backbone)
    parent, carried = None, first_fitted_on
    for name, kind in (("head", "train"), ("ft", "finetune"), ("qat", "finetune")):
        with RunWriter(tmp_path / name) as w:
            w.save_tensors(HEAD_WEIGHTS, create_head("linear", ref.feature_dim, 3).state_dict())
            metrics = {"train_accuracy": 1.0, "val_accuracy": 0.5}
            if kind == "train":
                metrics["hyperparameters"] = {"fitted_on": first_fitted_on}
            else:
                metrics["parent"] = {"path": str(parent), **({"fitted_on": carried} if recorded else {})}
            w.write_json(METRICS_JSON, metrics)
            w.write_json(RUN_JSON, replace(_info(ref), kind=kind).to_dict())
        parent = tmp_path / name
    return Run.open(parent)


@pytest.mark.parametrize("recorded", [True, False])
def test_a_fine_tune_of_a_fine_tune_knows_whether_val_was_fitted_at_its_start(tmp_path, backbone, recorded):
    # te export judges int8 only on images the model was never fitted on: the demo's QAT run starts from its
    # fine-tune, which started from a head kept on train (val unseen) or refitted on train+val (val seen)
    assert _write_chain(tmp_path / "kept", backbone, "train", recorded).val_was_fitted() is False
    assert _write_chain(tmp_path / "refit", backbone, "train+val", recorded).val_was_fitted() is True


def test_te_finetune_records_what_its_start_was_fitted_on_through_a_chain_of_fine_tunes():
    from types import SimpleNamespace

    from transfer_engine.finetune.fixed import _parent

    first = {"hyperparameters": {"fitted_on": "train"}, "val_accuracy": 0.9}  # a te train run's metrics
    second = {"parent": _parent(SimpleNamespace(parent="head", parent_metrics=first))}  # te finetune --from it
    assert second["parent"]["fitted_on"] == "train"
    assert _parent(SimpleNamespace(parent="ft", parent_metrics=second))["fitted_on"] == "train"
