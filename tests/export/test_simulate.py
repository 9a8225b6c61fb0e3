"""The int8 simulation QAT trains (`onnx.simulate`) computes what onnxruntime's int8 model of it computes.

A small network with what EfficientNet-Lite0 has (Conv+BatchNorm+ReLU6, a depthwise convolution, a ReLU6
module called twice, a residual Add, average pooling, a linear head), on the real digits upscaled to 32 px.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transfer_engine.errors import UsageError
from transfer_engine.onnx import simulate
from transfer_engine.onnx.export import export_classifier
from transfer_engine.onnx.int8 import Quantizer
from transfer_engine.onnx.recipes import RECIPES
from transfer_engine.runs import Classifier

SIZE = 32


class Block(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.expand, self.bn0 = nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.BatchNorm2d(4 * channels)
        self.depthwise = nn.Conv2d(4 * channels, 4 * channels, 3, padding=1, groups=4 * channels, bias=False)
        self.bn1 = nn.BatchNorm2d(4 * channels)
        self.project, self.bn2 = nn.Conv2d(4 * channels, channels, 1, bias=False), nn.BatchNorm2d(channels)
        self.act = nn.ReLU6()  # called twice in one forward, as Lite0's blocks call their _swish

    def forward(self, x):
        y = self.act(self.bn0(self.expand(x)))
        y = self.act(self.bn1(self.depthwise(y)))
        return x + self.bn2(self.project(y))


class Tiny(nn.Module):
    def __init__(self, functional_tail: bool = False) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.block = Block(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.functional_tail = functional_tail

    def forward(self, x):
        y = self.block(self.act(self.bn(self.stem(x))))
        if self.functional_tail:  # an Add no module computes: onnxruntime quantizes it, nothing can simulate it
            y = y + y * 0.5
        return torch.flatten(self.pool(y), 1)


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.kron(digits.images / 16.0, np.ones((SIZE // 8, SIZE // 8)))  # 8x8 scans, upscaled without smoothing
    x = np.repeat(x[:, None], 3, axis=1).astype(np.float32)
    return (x - 0.45) / 0.25, digits.target


def _model(functional_tail: bool = False) -> Classifier:
    torch.manual_seed(0)
    model = Classifier(Tiny(functional_tail), nn.Linear(8, 10)).eval()
    with torch.no_grad():  # BatchNorm statistics of a trained network, not the identity of a new one
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def digits():
    return _digits()


def test_folding_batchnorm_keeps_the_outputs_and_leaves_an_exact_identity(digits):
    x, _ = digits
    model = _model()
    before = _logits(model, x[:64])
    folded = simulate.fold_batchnorms(model, torch.from_numpy(x[:2]))
    assert len(folded) == 4  # the stem's and the block's three
    np.testing.assert_allclose(_logits(model, x[:64]), before, rtol=1e-4, atol=1e-5)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.running_mean == 0)
            assert torch.all(m.running_var + m.eps == 1)  # so onnxruntime's fusion multiplies by exactly 1


@pytest.fixture(scope="module")
def simulated(digits, tmp_path_factory):
    """The tiny model folded, its simulation read off onnxruntime, a few training steps taken through it (the
    scales stay, the weights move), the simulation's logits, then the model with the simulation taken out."""
    x, y = digits
    work = tmp_path_factory.mktemp("simulate")
    model = _model()
    folded = simulate.fold_batchnorms(model, torch.from_numpy(x[:2]))
    spec = simulate.derive(model, x[:256], RECIPES["portable"], work, folded=folded, crop_size=SIZE, opset=18)
    sim = simulate.QuantSim(model, spec).install()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(5):
        batch = slice(256 + 64 * i, 256 + 64 * (i + 1))
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x[batch])), torch.from_numpy(y[batch]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    logits = _logits(model, x[1000:1400])
    sim.remove()
    return model, spec, logits, work


def test_the_simulation_covers_every_tensor_onnxruntime_quantizes(simulated):
    _, spec, _, _ = simulated
    calls = {(p.module, p.call) for p in spec.points}
    # the input, each ReLU6 output (block.act twice), the residual Add (the block's output), the features,
    # the logits; the pooling itself stays float in the dynamo exporter's graph (simulate.derive says why)
    assert {(simulate.INPUT_POINT, 0), ("backbone.act", 0), ("backbone.block.act", 0), ("backbone.block.act", 1),
            ("backbone.block", 0), ("backbone", 0), ("head", 0)} <= calls
    assert spec.entry == "backbone"
    assert {layer.qmax for layer in spec.layers} == {64, 127}  # 7-bit, 8-bit in the depthwise convolution


def test_training_leaves_weights_and_biases_on_their_int8_grids(simulated):
    model, spec, _, _ = simulated
    modules = dict(model.named_modules())
    for layer in spec.layers:
        w = modules[layer.module].weight.detach().reshape(modules[layer.module].weight.shape[0], -1)
        scale = w.abs().amax(1, keepdim=True) / layer.qmax
        levels = w / scale
        assert torch.allclose(levels, levels.round(), atol=1e-3), layer.module


def test_onnxruntime_int8_computes_what_the_simulation_trained(simulated, digits):
    """The int8 file written from the trained model with its scales computes the simulation's logits bit for
    bit on every image: every activation takes the trained scale, the graph's outputs (features, logits)
    too (`tensor_overrides` keys them by the float graph's names, as onnxruntime's TensorQuantOverrides reads
    them; under the quantized graph's names they were silently calibrated afresh)."""
    model, spec, sim_logits, work = simulated
    x, _ = digits
    fp32 = work / "trained.fp32.onnx"
    export_classifier(model, fp32, crop_size=SIZE, opset=spec.opset, exporter=spec.exporter)
    (work / "export").mkdir()  # as te export: not the calibration ranges derive() left in `work`
    quantizer = Quantizer(fp32, x[:256], RECIPES["portable"], work / "export", "images")
    int8 = work / "trained.int8.onnx"
    quantizer.quantize(int8, [])
    quantizer.set_activations(simulate.tensor_overrides(model, spec, quantizer.prepared, int8, x))
    quantizer.quantize(int8, [])
    got = quantizer.logits(int8, "logits", images=x[1000:1400])
    assert np.array_equal(got, sim_logits)
    # the same file calibrated afresh (post-training, not the trained scales) is measurably further off
    (work / "fresh").mkdir()
    fresh = Quantizer(fp32, x[:256], RECIPES["portable"], work / "fresh", "images")
    fresh.quantize(work / "fresh.int8.onnx", [])
    ptq = fresh.logits(work / "fresh.int8.onnx", "logits", images=x[1000:1400])
    assert np.abs(ptq - sim_logits).mean() > np.abs(got - sim_logits).mean()


def test_a_tensor_no_module_computes_is_refused_with_its_name(digits, tmp_path):
    x, _ = digits
    model = _model(functional_tail=True)
    folded = simulate.fold_batchnorms(model, torch.from_numpy(x[:2]))
    with pytest.raises(UsageError, match="no module call computes"):
        simulate.derive(model, x[:64], RECIPES["portable"], tmp_path, folded=folded, crop_size=SIZE, opset=18)
