"""`te export` on a real run: efficientnet_lite0 (real ImageNet weights) + a linear head fitted on real
digit features, exported to int8 (deployed) and fp32 with preprocessing in the graph and the
backbone/head split, checked on 32 held-out digits. One export, shared by these tests (conftest)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from transfer_engine.core import cpu
from transfer_engine.onnx.metadata import read_metadata
from transfer_engine.onnx.runtime import open_session
from transfer_engine.runs import Run

from .helpers import CHECK_SIZE

MEASURES = ("max_abs_diff", "mean_abs_diff", "cosine", "top1_agreement", "accuracy_delta")


@pytest.fixture(scope="module")
def report(lite) -> dict:
    return json.loads((lite / "out" / "lite.parity.json").read_text())


def _photo(name: str) -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    image = getattr(skimage_data, name)()
    return np.stack([image] * 3, -1) if image.ndim == 2 else image[..., :3]


def test_fp32_matches_pytorch_within_tolerance_on_held_out_digits(report):
    assert report["passed"] and report["failures"] == []
    assert report["check"]["images"] == CHECK_SIZE and report["check"]["failed"] == []
    assert "test images of builtin:digits" in report["check"]["source"]  # test only: val may select int8
    fp32 = report["variants"]["fp32"]
    assert set(MEASURES) <= set(fp32) and set(fp32["features"]) == {"max_abs_diff", "mean_abs_diff", "cosine"}
    assert report["tolerance"]["fp32_rtol"] == 1e-4
    assert fp32["max_abs_diff"] <= report["tolerance"]["logits"]
    assert fp32["features"]["max_abs_diff"] <= report["tolerance"]["features"]
    assert fp32["top1_agreement"] == 1.0 and fp32["accuracy_delta"] == 0.0
    assert fp32["cosine"] > 0.99999
    assert set(fp32["providers"]) == set(report["providers"]["used"]) and "CPUExecutionProvider" in fp32["providers"]
    # the head was fitted on real features: the model is far better than chance on held-out digits
    assert report["check"]["torch_accuracy"] > 0.7


def test_int8_is_really_quantized_and_says_how_far_it_is(lite, report):
    int8 = report["variants"]["int8"]
    assert report["variant"] == "int8" and int8["file"] == str(lite / "out" / "lite.onnx")
    assert set(MEASURES) <= set(int8)
    # deployed on the gate's evidence (train/val images that are neither check nor calibration images);
    # the check images report it, unbiased, with the bound they support
    gate = report["calibration"]["int8"]["gate"]
    assert int8["passed"] and gate["passed"] and gate["lower_bound"] >= report["tolerance"]["min_agreement"]
    assert report["calibration"]["selection"]["images"] == gate["images"] > 32
    assert int8["unbiased"]["images"] == report["check"]["images"] == 32
    assert int8["unbiased"]["lower_bound"] < int8["unbiased"]["agreement"] == int8["top1_agreement"]
    assert 0.8 <= int8["top1_agreement"] <= 1.0 and int8["max_abs_diff"] > report["variants"]["fp32"]["max_abs_diff"]
    assert report["calibration"]["images"] == 32 and report["calibration"]["format"] == "QDQ"
    ops = {n.op_type for n in onnx.load(str(lite / "out" / "lite.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert int8["bytes"] < 0.5 * report["variants"]["fp32"]["bytes"]  # int8 weights: about 4x smaller
    # the portable recipe (7-bit weights, 8-bit in depthwise convs: exact with and without VNNI), and the
    # CPU it was checked on
    search = report["calibration"]["int8"]
    assert report["calibration"]["reduce_range"] and search["recipe"]["name"] == "portable"
    assert report["calibration"]["depthwise_full_range"] and search["recipe"]["depthwise_full_range"]
    assert search["checked_on"] == cpu.describe() and search["steps"][0]["float_nodes"] == 0


def test_batch_axis_is_dynamic(lite, report):
    assert {k: v["passed"] for k, v in report["batch_sizes"].items()} == {"1": True, "3": True, "8": True}
    for name in ("lite.onnx", "lite.fp32.onnx", "lite.backbone.onnx"):
        batch_dim = onnx.load(str(lite / "out" / name)).graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param and not batch_dim.dim_value, name
    session = open_session(str(lite / "out" / "lite.fp32.onnx"), "CPUExecutionProvider")
    photos = np.stack([_photo("coffee")] * 5)  # batch 5: a size the export never ran at
    logits, features = session.run({"images": photos})
    assert logits.shape == (5, 10) and features.shape == (5, 1280)
    np.testing.assert_allclose(logits, np.repeat(logits[:1], 5, axis=0), rtol=0, atol=1e-4)


def test_metadata_carries_classes_preprocessing_and_provenance(lite):
    run = Run.open(lite / "run")
    meta = read_metadata(lite / "out" / "lite.onnx")
    assert meta.class_names == run.class_names == [str(i) for i in range(10)]
    assert meta.preprocess == run.preprocess.to_dict() and meta.preprocess["interpolation"] == "bicubic"
    assert meta.variant == "int8" and meta.part == "model" and meta.outputs == ["logits", "features"]
    assert meta.input.dtype == "uint8" and meta.input.layout == "nhwc" and meta.input.in_graph_preprocessing
    assert meta.run["path"] == str(run.path) and meta.run["backbone"]["name"] == "efficientnet_lite0"
    assert meta.run["backbone"]["weights_digest"] == run.info.backbone.weights_digest
    assert meta.export["opset"] == 18 and meta.export["exporter"] in ("torchscript", "dynamo")
    assert meta.quantization["recipe"]["name"] == "portable"
    assert meta.quantization["checked_on"]["int8_family"] == cpu.int8_family()
    assert read_metadata(lite / "out" / "lite.fp32.onnx").quantization == {}
    props = {p.key for p in onnx.load(str(lite / "out" / "lite.fp32.onnx")).metadata_props}
    assert {"te.class_names", "te.preprocess", "te.run", "te.variant", "te.input"} <= props


def test_in_graph_preprocessing_matches_the_pytorch_transform(lite, report):
    pixels = report["preprocess"]["pixels"]
    assert pixels["passed"] and pixels["max_level_diff"] <= 1.0 + 1e-3
    assert report["preprocess"]["end_to_end"]["fp32"]["top1_agreement"] == 1.0
    # a real photo of another size than the digits, raw uint8 pixels in, against PyTorch's whole path
    run = Run.open(lite / "run")
    photo = _photo("chelsea")
    with torch.inference_mode():
        expected = run.build_model()(run.preprocess.transform()(Image.fromarray(photo)).unsqueeze(0)).numpy()
    session = open_session(str(lite / "out" / "lite.fp32.onnx"), "CPUExecutionProvider")
    logits, _ = session.run({"images": photo[None]})
    assert logits.argmax() == expected.argmax()
    assert np.abs(logits - expected).max() < 0.01 * max(1.0, np.abs(expected).max())


def test_split_parts_reproduce_the_whole_model(lite, report):
    split = report["split"]
    assert split["backbone_then_head"]["passed"] and split["head_on_pytorch_features"]["passed"]
    assert split["head_on_pytorch_features"]["max_abs_diff"] <= report["tolerance"]["logits"]
    photo = _photo("astronaut")[None]
    whole = open_session(str(lite / "out" / "lite.fp32.onnx"), "CPUExecutionProvider").run({"images": photo})
    (features,) = open_session(str(lite / "out" / "lite.backbone.onnx"), "CPUExecutionProvider").run({"images": photo})
    (logits,) = open_session(str(lite / "out" / "lite.head.onnx"), "CPUExecutionProvider").run({"features": features})
    np.testing.assert_array_equal(features, whole[1])
    np.testing.assert_allclose(logits, whole[0], rtol=0, atol=1e-5)
    assert read_metadata(lite / "out" / "lite.head.onnx").part == "head"


def test_report_lists_every_file_written(lite, report):
    out = lite / "out"
    assert report["files"] == {"model": str(out / "lite.onnx"), "fp32": str(out / "lite.fp32.onnx"),
                               "backbone": str(out / "lite.backbone.onnx"), "head": str(out / "lite.head.onnx"),
                               "report": str(out / "lite.parity.json")}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["lite.onnx", "lite.fp32.onnx", "lite.backbone.onnx", "lite.head.onnx", "lite.parity.json"])
