"""Every ONNX file te writes holds its weights itself. torch.onnx's dynamo exporter writes them to a
FILE.data beside the graph: a copy or rename of the .onnx alone breaks it, and te extract keeps its
exported backbone as one content-addressed cache artifact, whose second file `te cache gc` deleted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfer_engine.onnx.export import export_backbone


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_an_exported_backbone_is_one_file_that_runs_after_a_move(tmp_path, exporter):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten()).eval()
    written = tmp_path / "written" / "backbone.onnx"
    written.parent.mkdir()
    assert export_backbone(model, written, crop_size=16, opset=18, exporter=exporter) == exporter
    assert [p.name for p in written.parent.iterdir()] == ["backbone.onnx"]
    moved = tmp_path / "elsewhere.onnx"
    written.rename(moved)
    x = np.random.default_rng(0).standard_normal((3, 3, 16, 16), dtype=np.float32)
    (features,) = ort.InferenceSession(str(moved)).run(["features"], {"images": x})
    with torch.no_grad():
        np.testing.assert_allclose(features, model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-5)
