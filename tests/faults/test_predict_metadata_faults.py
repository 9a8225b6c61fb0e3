"""#35 item 11: `te predict` trusted te's metadata in the model. Shorter class_names ended in an IndexError,
quantization given as a string in an AttributeError, std 0 or a bad interpolation in a ValueError, a uint8
input the graph does not take in an onnxruntime error, resize_size 60000 in the OOM killer. The metadata is
now checked where it is read, field by field and against the graph, in one line naming the field. Also:
--out equal to the --data manifest, and a folder named d.onnx.

The models are crafted here: a 10-class graph of three nodes (8x8 images -> mean colour -> logits) with te
metadata written by `set_metadata`, then edited one field at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from transfer_engine.cli.main import main
from transfer_engine.errors import UsageError
from transfer_engine.onnx.metadata import InputSpec, ModelMetadata, read_metadata, set_metadata
from transfer_engine.predict import predict

CLASSES = [str(i) for i in range(10)]
PREPROCESS = {"crop_size": 8, "resize_size": 8, "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25]}


def _model(path, **edits):
    """A tiny te model at `path`; `edits` replace te.* fields (values as they are stored, JSON-encoded here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(np.random.default_rng(0).normal(size=(3, 10)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["features"]),
         helper.make_node("MatMul", ["features", "w"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 10]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 3])], initializer=[weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    set_metadata(model, ModelMetadata(class_names=CLASSES, preprocess=dict(PREPROCESS), input=InputSpec()))
    for entry in model.metadata_props:
        key = entry.key.removeprefix("te.")
        if key in edits:
            entry.value = json.dumps(edits[key])
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.full((12, 16, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_a_well_formed_model_predicts(tmp_path, photos):
    summary = predict(_model(tmp_path / "m.onnx"), str(photos))
    assert summary.predicted == 2 and summary.predictions[0]["prediction"] in CLASSES


@pytest.mark.parametrize("edits, words", [
    ({"class_names": CLASSES[:3]}, "'class_names' has 3 names but the model outputs 10 logits"),
    ({"class_names": "0123456789"}, "'class_names' is"),
    ({"quantization": "int8"}, "'quantization' is \"int8\"; expected an object"),
    ({"variant": "int8", "quantization": {"recipe": "vnni"}}, "'quantization.recipe'"),
    ({"preprocess": {**PREPROCESS, "std": [0.25, 0, 0.25]}}, "'preprocess.std'"),
    ({"preprocess": {**PREPROCESS, "mean": [0.5, "x", 0.5]}}, "'preprocess.mean'"),
    ({"preprocess": {**PREPROCESS, "interpolation": "lanczos9"}}, "'preprocess.interpolation'"),
    ({"preprocess": {**PREPROCESS, "resize_size": 60000}}, "'preprocess.resize_size' is 60000; expected a whole "
                                                            "number of pixels in 1..4096"),
    ({"preprocess": {**PREPROCESS, "crop_size": 16, "resize_size": 16}}, "'preprocess.crop_size' is 16, but the "
                                                                          "graph takes images of 3x8x8"),
    ({"preprocess": {**PREPROCESS, "crop_size": "8"}}, "'preprocess.crop_size'"),
    ({"input": {"name": "images", "dtype": "uint8", "layout": "nhwc", "in_graph_preprocessing": True}},
     "'input.dtype' is uint8, but the graph's input 'images' takes float32"),
    ({"input": {"name": "pixels", "dtype": "float32", "layout": "nchw", "in_graph_preprocessing": False}},
     "'input.name'"),
    ({"input": {"name": "images", "dtype": "uint8", "layout": "nchw", "in_graph_preprocessing": False}},
     "'input'"),
    ({"input": "images"}, "'input'"),
    ({"outputs": ["logits", "probabilities"]}, "'outputs'"),
    ({"part": "everything"}, "'part'"),
])
def test_bad_metadata_is_one_line_naming_the_field(tmp_path, photos, capsys, edits, words):
    model = _model(tmp_path / "model.onnx", **edits)
    with pytest.raises(UsageError) as caught:
        read_metadata(model)
    assert words in str(caught.value) and str(caught.value).startswith(f"{model}: ")
    code = main(["predict", str(model), "--data", str(photos)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("te: error: ") and words in err[0], err
    assert "internal error" not in err[0]


def test_out_equal_to_the_data_manifest_is_refused_before_anything_is_written(tmp_path, photos, capsys):
    manifest = photos / "m.csv"
    manifest.write_text("path,label\n0.png,0\n1.png,1\n")
    before = manifest.read_bytes()
    (tmp_path / "link.csv").symlink_to(manifest)
    model = _model(tmp_path / "model.onnx")
    for out in (str(manifest), str(photos / "." / "m.csv"), str(tmp_path / "link.csv")):
        code = main(["predict", str(model), "--data", str(manifest), "--out", out])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "is the --data manifest" in err[0], err
    assert manifest.read_bytes() == before and (tmp_path / "link.csv").is_symlink()
    assert main(["predict", str(model), "--data", str(manifest), "--out", str(tmp_path / "p.csv")]) == 0


def test_a_folder_named_like_a_model_is_called_a_folder(tmp_path, capsys):
    (tmp_path / "d.onnx").mkdir()
    code = main(["predict", str(tmp_path / "d.onnx"), "--data", "builtin:digits"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a folder, not an ONNX model file" in err[0], err
