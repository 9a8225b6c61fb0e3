"""int8 is chosen on images that report nothing and reported on images that chose nothing: calibration,
selection and check (test) images are three disjoint sets, and te export says which figure rests on which."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from tests.export.helpers import digits_cache, mobilenet_run
from transfer_engine.export import exporter, images
from transfer_engine.export import int8_budget as int8_module
from transfer_engine.runs import Run


def _row_hashes(array: np.ndarray) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(row).tobytes()).hexdigest() for row in array}


def test_the_int8_selection_never_reads_a_test_image(tmp_path, monkeypatch):
    cache, records = digits_cache(tmp_path)
    run = Run.open(mobilenet_run(tmp_path, cache))
    seen = {}
    real = int8_module.quantize_within_budget

    def spy(fp32, out, calibration, selection, **kwargs):
        seen["calibration"], seen["selection"] = calibration, selection
        return real(fp32, out, calibration, selection, **kwargs)

    monkeypatch.setattr(int8_module, "quantize_within_budget", spy)
    result = exporter.export_onnx(run, tmp_path / "out" / "m.onnx", quantize="int8", check_size=16,
                                  calibration_size=16, selection_size=120, min_agreement=0.05,
                                  min_int8_speedup=0, batch_sizes=(1,))
    val = [r for r in records if r.split == "val"]
    # every test image of the data set, as the model sees it, is in neither the calibration nor the selection
    test = images.ImageSet("test", images.open_source("builtin:digits"),
                           [images.Sample(r.path, r.label, r.split) for r in records if r.split == "test"],
                           [None] * sum(r.split == "test" for r in records))
    loaded, _, _ = test.load()
    transform = run.preprocess.transform()
    test_rows = _row_hashes(np.stack([transform(im).numpy() for im in loaded]).astype(np.float32))
    assert len(test_rows) > 200
    assert not test_rows & _row_hashes(seen["selection"]) and not test_rows & _row_hashes(seen["calibration"])
    assert not _row_hashes(seen["selection"]) & _row_hashes(seen["calibration"])
    # nor a train image: the model fits those better than new ones, so int8 agrees on them more often
    train = [r for r in records if r.split == "train"]
    train_rows = _row_hashes(np.stack([transform(im).numpy() for im in images.ImageSet(
        "train", test.source, [images.Sample(r.path, r.label, r.split) for r in train[:300]], [None] * 300).load()[0]]))
    assert not train_rows & _row_hashes(seen["selection"])
    assert len(seen["selection"]) == 120 < len(val) and len(seen["calibration"]) == 16
    # the report names each set: the check images are the test split, the gate rests on val images
    report = result.report
    assert report["check"]["source"].startswith(f"{report['check']['images']} test images of builtin:digits")
    assert "val images of builtin:digits, which the model was not fitted on" in \
        report["calibration"]["selection"]["source"]
    assert report["calibration"]["int8"]["gate"]["images"] == 120
    assert report["variants"]["int8"]["unbiased"]["images"] == report["check"]["images"]


def test_check_images_come_from_test_and_fall_back_to_val_only_without_one(tmp_path):
    for split in ("train", "val", "test"):
        for digit in ("0", "1"):
            (tmp_path / "data" / split / digit).mkdir(parents=True)
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 6), ("test", 4)):
        for digit in ("0", "1"):
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "data" / split / digit / f"{i}.png")

    class FakeRun:
        class info:
            dataset = {"data": str(tmp_path / "data")}
        path = tmp_path
        class_names = ["0", "1"]

        @staticmethod
        def cached_records():
            return None, "no cache"

        @staticmethod
        def val_was_fitted():
            return False

    check = images.held_out_images(FakeRun, None, 100)
    assert {s.split for s in check.samples} == {"test"} and len(check) == 8
    cal = images.train_images(FakeRun, None, 10)
    selection = images.selection_images(FakeRun, None, 100, check, cal)
    assert {s.split for s in selection.samples} == {"val"} and len(selection) == 12
    assert not {s.path for s in selection.samples} & {s.path for s in [*check.samples, *cal.samples]}
    import shutil

    shutil.rmtree(tmp_path / "data" / "test")
    check = images.held_out_images(FakeRun, None, 100)  # no test split: val checks, and nothing is left to select on
    assert {s.split for s in check.samples} == {"val"}
    selection = images.selection_images(FakeRun, None, 100, check, images.train_images(FakeRun, None, 10))
    assert len(selection) == 0 and "its val images are the check images" in selection.description


def test_a_model_fitted_on_val_leaves_no_images_to_select_on_and_says_why(tmp_path):
    cache, _ = digits_cache(tmp_path)
    run = Run.open(mobilenet_run(tmp_path, cache))
    run.metrics["hyperparameters"]["fitted_on"] = "train+val"  # what te train --sweep records
    check = images.held_out_images(run, None, 50)
    selection = images.selection_images(run, None, 100, check, images.train_images(run, None, 10))
    assert len(selection) == 0 and "fitted on train and val" in selection.description


def test_the_default_gate_on_a_real_model_refuses_evidence_too_thin_and_says_how_much_it_needs(lite, tmp_path):
    # te export's defaults (99% floor, speed rule) on EfficientNet-Lite0 with real weights and a head fitted
    # on train digits alone: 100 val digits cannot show 99% with 95% confidence, whatever int8 does on
    # them, so te refuses before any search and says how many images would (268, all agreeing)
    from transfer_engine.export import ParityError

    with pytest.raises(ParityError, match=r"100 selection image\(s\) cannot support a 99\.0% gate.*only from 268 images"):
        exporter.export_onnx(lite / "run", tmp_path / "m.onnx", quantize="int8", selection_size=100, check_size=16,
                             calibration_size=32, batch_sizes=(1,))
    report = json.loads((tmp_path / "m.parity-failed.json").read_text())
    search = report["calibration"]["int8"]
    assert len(search["steps"]) == 1 and search["steps"][0]["images"] == 100  # full int8 measured, no search
    assert search["gate"]["images"] == 100 and not search["gate"]["passed"]
    assert "100 val images of builtin:digits, which the model was not fitted on" in report["calibration"]["selection"]["source"]
    assert report["variants"]["fp32"]["passed"] and sorted(p.name for p in tmp_path.iterdir()) == ["m.parity-failed.json"]
