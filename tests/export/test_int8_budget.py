"""The accuracy budget of int8 export: when full int8 misses the gate, te keeps the nodes whose int8
costs the output most in float until the gate is met, says which, and refuses a mix no faster than fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from transfer_engine.export.gate import AgreementGate
from transfer_engine.export.int8_budget import quantize_within_budget
from transfer_engine.onnx.int8 import int8_nodes, quantize_fully
from transfer_engine.onnx.recipes import RECIPES


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16), torch.nn.ReLU(),
                                        torch.nn.Conv2d(16, 32, 1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.fc = torch.nn.Linear(32, 1000)  # many classes: close runners-up, so int8 flips some

    def forward(self, x):
        return self.fc(self.body(x))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int8-budget")
    path = folder / "tiny.onnx"
    torch.onnx.export(TinyNet().eval(), torch.randn(1, 3, 16, 16), str(path), input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}},
                      opset_version=17, dynamo=False)
    images = np.random.default_rng(0).standard_normal((256, 3, 16, 16)).astype(np.float32)
    return path, images


@pytest.fixture(scope="module")
def selection():
    """Images the calibration never saw: every mix is judged on them (labels are not needed)."""
    return np.random.default_rng(1).standard_normal((256, 3, 16, 16)).astype(np.float32)


def _quantize(tiny, selection, tmp_path, floor=0.9, **kwargs):
    path, images = tiny
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "tiny.int8.onnx"
    kwargs = {"min_speedup": 0.0, **kwargs}
    outcome = quantize_within_budget(path, out, images, selection, recipe=RECIPES["portable"],
                                     gate=AgreementGate(floor), workdir=work, **kwargs)
    return outcome, out


def _quantize_nodes(path):
    return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)


def test_a_missed_gate_keeps_the_most_sensitive_nodes_in_float_until_it_is_met(tiny, selection, tmp_path):
    # a gate of 85%: full int8 flips about a quarter of 256 random images between 1,000 close classes;
    # the logits' Gemm in float buys back most of it
    outcome, out = _quantize(tiny, selection, tmp_path, floor=0.85)
    first = outcome.steps[0]
    assert first["float_nodes"] == 0 and not first["passed"] and first["agreement"] < 0.85
    assert outcome.passed and outcome.failure is None
    assert outcome.float_nodes and 0 < int8_nodes(out) < outcome.quantized_nodes  # some int8 is left
    # every mix is judged on all the selection images, and passes only when the 95% lower bound of its
    # agreement (not the agreement itself) reaches the floor
    assert all(s["images"] == len(selection) for s in outcome.steps)
    assert all(s["passed"] == (s["lower_bound"] >= 0.85) and s["lower_bound"] < s["agreement"] for s in outcome.steps)
    assert outcome.gate["passed"] and outcome.gate["lower_bound"] >= 0.85
    assert "256 selection images" in outcome.selection
    # ranked by what each group alone in int8 costs the logits: here the 1,000-class Gemm writing them
    ranked = outcome.sensitivity
    assert ranked[0]["writes_output"] and ranked[0]["op"] == "Gemm"
    costs = [r["isolated_error"] for r in ranked]
    assert costs == sorted(costs, reverse=True) and costs[-1] > 0
    assert outcome.recipe["name"] == "portable" and outcome.checked_on["int8_family"]
    graph_nodes = {n.name for n in onnx.load(str(out)).graph.node}
    assert set(outcome.float_nodes) <= graph_nodes  # the float nodes are still there, unquantized


def test_a_gate_full_int8_meets_keeps_everything_int8(tiny, selection, tmp_path):
    outcome, out = _quantize(tiny, selection, tmp_path, floor=0.05)
    assert outcome.passed and outcome.float_nodes == [] and len(outcome.steps) == 1
    assert _quantize_nodes(out) > 0


def test_int8_no_faster_than_asked_is_refused_with_its_measured_speed(tiny, selection, tmp_path):
    outcome, _ = _quantize(tiny, selection, tmp_path, floor=0.05, min_speedup=99.0)
    assert not outcome.passed and "--min-int8-speedup 99" in outcome.failure and "--qat" in outcome.failure
    assert outcome.qat_advised  # what te demo reads to take that advice
    # both batch sizes a server sees are timed, and the rule holds at each
    assert set(outcome.speed["batches"]) == {"1", "32"} and "at batch 1" in outcome.failure
    assert outcome.speed["speedup"] == min(b["speedup"] for b in outcome.speed["batches"].values()) > 0


def test_a_gate_only_the_fp32_model_meets_is_refused_not_passed_off_as_int8(tiny, selection, tmp_path):
    # a 98% floor on 256 images (the bound needs at least 99.5% of them) is met only with every group in
    # float: that is the fp32 model, not an int8 one
    outcome, _ = _quantize(tiny, selection, tmp_path, floor=0.98)
    assert not outcome.passed and "no mix of int8 and float nodes" in outcome.failure
    groups = max(s["float_groups"] for s in outcome.steps)
    assert f"of {groups + 1} node groups in float" in outcome.failure  # never every group
    assert "`te finetune --from RUN --qat` trains the int8 model itself" in outcome.failure  # the way on
    assert outcome.qat_advised
    assert all(s["float_groups"] <= groups for s in outcome.steps)


def test_too_few_selection_images_for_the_floor_are_refused_saying_how_many_it_would_take(tiny, selection, tmp_path):
    # with every one of 200 images agreeing the bound is 98.7%: a 99% gate cannot be shown on them
    outcome, _ = _quantize(tiny, selection[:200], tmp_path, floor=0.99)
    assert not outcome.passed and len(outcome.steps) == 1  # no search on evidence that cannot pass
    assert "200 selection image(s) cannot support a 99.0% gate" in outcome.failure
    assert "only from 268 images" in outcome.failure and "--selection-data" in outcome.failure
    assert not outcome.qat_advised and "--qat" not in outcome.failure  # training makes no more images


def test_a_relu_folded_into_its_conv_output_is_not_counted_as_rounding_error(tiny, selection, tmp_path):
    # The quantizer folds each ReLU into its Conv's output range, so before Q the tensor still holds
    # negative values that after DQ read 0: measured raw, each such group looked ~50% wrong and the
    # ranking followed ReLUs, not rounding. 8-bit rounding of one tensor costs about 1%.
    outcome, _ = _quantize(tiny, selection, tmp_path)
    assert max(g["rounding_error"] for g in outcome.sensitivity) < 0.1


def _weight_codes(path) -> dict[str, int]:
    """{conv node: the largest |int8 code| of its weights} of a QDQ model."""
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {n.name: int(np.abs(constants[dequantized[n.input[1]]].astype(np.int32)).max())
            for n in graph.node if n.op_type == "Conv" and dequantized.get(n.input[1]) in constants}


def test_the_portable_recipe_keeps_8_bit_weights_only_where_every_cpu_computes_them_exactly(tiny, tmp_path):
    # 7-bit weights in the GEMM convs (a u8 x s8 pair sum fits vpmaddubsw's int16 without VNNI); the
    # depthwise conv keeps 8 bits: onnxruntime's depthwise kernels widen to 16 bits before multiplying
    path, images = tiny
    out = tmp_path / "portable.onnx"
    quantize_fully(path, out, images[:64], recipe=RECIPES["portable"], workdir=tmp_path)
    codes = _weight_codes(out)
    depthwise = [name for name in codes if "body.2" in name]
    assert len(codes) == 3 and len(depthwise) == 1
    assert codes[depthwise[0]] > 64 and all(c <= 64 for name, c in codes.items() if name not in depthwise)
    # on this CPU, whichever family it is, the integer kernels compute what exact int32 accumulation gives
    # (onnxruntime with graph optimizations off runs the Q/DQ graph as float arithmetic)
    import onnxruntime as ort

    def logits(exact: bool) -> np.ndarray:
        options = ort.SessionOptions()
        if exact:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images[64:128]})[0]

    fast, exact = logits(False), logits(True)
    assert np.abs(fast - exact).mean() < 0.02 * np.abs(exact).mean()
    assert (fast.argmax(1) == exact.argmax(1)).mean() >= 0.95


class WideRangeNet(torch.nn.Module):
    """A depthwise conv whose channels' weights differ 1,000-fold, between two int8 convs: per-tensor
    8-bit weights round its small channels to zero."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.expand = torch.nn.Conv2d(3, 8, 1)
        self.depthwise = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.project = torch.nn.Conv2d(8, 4, 1)
        with torch.no_grad():  # channels 4-7: inputs 1,000x larger, weights 1,000x smaller, outputs alike
            self.expand.weight[4:] *= 1e3
            self.expand.bias[4:] *= 1e3
            self.depthwise.weight[4:] *= 1e-3

    def forward(self, x):
        return self.project(torch.nn.functional.relu6(self.depthwise(torch.nn.functional.relu6(self.expand(x))))).mean((2, 3))


def test_a_node_kept_in_float_stays_float_when_onnxruntime_loads_the_model(tmp_path):
    # onnxruntime's WeightBiasQuantization optimization quantizes (per tensor, 8-bit) the weight of a float
    # Conv that sits between Q/DQ pairs: te's float node would run as a coarse int8 one. With te's float
    # nodes the default session computes what the unoptimized graph computes (float weights, exact).
    import onnxruntime as ort

    path = tmp_path / "wide.onnx"
    torch.onnx.export(WideRangeNet().eval(), torch.randn(1, 3, 8, 8), str(path), input_names=["images"],
                      output_names=["logits"], dynamic_axes={"images": {0: "n"}, "logits": {0: "n"}},
                      opset_version=17, dynamo=False)
    images = np.random.default_rng(0).standard_normal((64, 3, 8, 8)).astype(np.float32)
    graph = onnx.load(str(path)).graph
    depthwise = next(n.name for n in graph.node if n.op_type == "Conv" and any(
        a.name == "group" and a.i == 8 for a in n.attribute))
    out = tmp_path / "mixed.onnx"
    from transfer_engine.onnx.int8 import Quantizer

    (tmp_path / "w").mkdir()
    Quantizer(path, images, RECIPES["portable"], tmp_path / "w", "images").quantize(out, [depthwise])

    def logits(level) -> np.ndarray:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        return ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"]).run(None, {"images": images})[0]

    default, unoptimized = logits(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), logits(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    # (without te's guard the default session differs by 0.2% of the output's scale here: the small channels)
    assert np.abs(default - unoptimized).max() <= 1e-5 * np.abs(unoptimized).max()
    float_convs = [n for n in onnx.load(str(out)).graph.node if n.name == depthwise]
    assert float_convs and float_convs[0].input[1] in {t.name for t in onnx.load(str(out)).graph.initializer}
