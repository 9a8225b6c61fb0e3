"""int8 as onnxruntime computes it, simulated in PyTorch: what quantization-aware fine-tuning trains
(`te finetune --qat`) and what te export checks a QAT run's int8 file against.

The simulation is read off onnxruntime's own quantizer rather than re-derived from its documentation:

1. `fold_batchnorms`: each BatchNorm is folded into the convolution before it. The BatchNorm stays in the
   model as an identity that adds the folded bias (weight 1, mean 0, variance 1 - eps), so the run's weights
   keep their names and onnxruntime's own Conv+BatchNorm fusion reproduces the folded weights exactly.
2. `derive`: the model is exported and quantized by `onnx.int8.Quantizer` with the recipe, calibrated on real
   images. onnxruntime decides which tensors are quantized and at which scale and zero point; each of those
   tensors is matched, by its values on two calibration images, to the module call in PyTorch that computes
   it (module path, nth call in one forward: a ReLU module may run twice in a block).
3. `QuantSim` fake-quantizes exactly those: activations per tensor at onnxruntime's (frozen) scale and
   zero point, weights per output channel as the recipe does (symmetric, scale = max |w| / qmax, qmax 64 for
   7-bit and 127 for 8-bit weights), and biases to int32 at the scale onnxruntime gives them (input scale x
   weight scale). Rounding is to the nearest even, as onnxruntime's QuantizeLinear. Training goes through a
   straight-through estimator; `QuantSim.remove` leaves weights and biases on their grids, so quantizing the
   trained model again loses nothing.
4. In evaluation (eval mode, no gradients) `QuantSim` computes onnxruntime's integer arithmetic itself: exact
   integer sums and the kernels' requantization, so the model evaluated is the int8 file, bit for bit where
   the kernels are exact (docs/export.md, "The kernels' arithmetic can be reproduced exactly").

Measured on EfficientNet-Lite0 (docs/export.md, "Quantization-aware fine-tuning"): with the biases simulated,
the simulation and onnxruntime's int8 kernels give the same top-1 class on real images; without them the
bias rounding alone shifts a fraction of the stem's outputs by one step and the difference grows through the
layers. A tensor onnxruntime quantizes that no module call computes (a functional op at the end of a
forward no module wraps) cannot be simulated: `derive` refuses such a model, naming the tensors.
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.weak import WeakIdKeyDictionary

from transfer_engine.errors import UsageError
from transfer_engine.onnx.recipes import Int8Recipe

INPUT_POINT = "<input>"       # the model's input image, quantized like any activation
MATCH_IMAGES = 2              # images the ONNX tensors are matched to module calls on
OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # onnxruntime renames a graph output it quantizes to NAME + this
# Images per forward of the exact evaluation on a CPU: its integer arithmetic passes over each activation several
# times, and at this size an activation stays in the CPU's caches between passes (larger batches evaluate more
# slowly per image: benchmarks in docs/export.md, "Training in float, evaluating in integers").
EXACT_BATCH = 16


@dataclass(frozen=True)
class Point:
    """One activation onnxruntime quantizes: the module call that computes it and its scale and zero point."""

    module: str        # the module's path in the model ("" the model itself, INPUT_POINT its input)
    call: int          # which call of that module in one forward (0 the first)
    scale: float
    zero_point: int
    tensor: str = ""   # its name in the ONNX graph it was read from (for the report)


@dataclass(frozen=True)
class Layer:
    """A Conv/Linear whose weights are quantized: its weight grid and where its bias and input scale come from."""

    module: str        # path of the Conv2d / Linear
    qmax: int          # weights in [-qmax, qmax] (64: 7-bit, 127: 8-bit)
    bias: str          # path of the module holding its bias: itself, or the folded BatchNorm after it ("" none)
    input: int         # index into `SimSpec.points` of the activation it reads (-1: unknown, bias not simulated)


@dataclass
class SimSpec:
    """Everything `QuantSim` needs; saved with a QAT run (`to_dict` / `from_dict`)."""

    recipe: str
    points: list[Point] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    folded: list[str] = field(default_factory=list)  # BatchNorms folded into their convolutions
    # the outermost module below the model's root that receives the images (a Classifier's backbone): each of
    # its calls starts one forward, whether the model is called whole or backbone and head one after the other
    entry: str = ""
    opset: int = 0       # the ONNX graph the points were read from: te export writes the same one
    exporter: str = ""

    @property
    def graph(self) -> str:
        return f"opset {self.opset}, {self.exporter} exporter" if self.exporter else "te export's defaults"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SimSpec":
        return cls(recipe=data["recipe"], points=[Point(**p) for p in data["points"]],
                   layers=[Layer(**layer) for layer in data["layers"]], folded=list(data.get("folded", [])),
                   entry=data.get("entry", ""), opset=data.get("opset", 0), exporter=data.get("exporter", ""))


# -- 1. BatchNorm folding -------------------------------------------------------------------------------
def fold_batchnorms(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Fold each BatchNorm2d that directly reads a Conv2d's output into that convolution, in place.

    The BatchNorm is left as an identity carrying the folded bias, so the state dict keeps its keys and
    onnxruntime's Conv+BatchNorm fusion gives back exactly the folded weights. Returns {batchnorm path:
    conv path}. The model must be in eval mode (running statistics, which QAT keeps frozen).
    """
    names = {m: n for n, m in model.named_modules()}
    produced: dict[int, nn.Conv2d] = {}
    pairs: dict[nn.BatchNorm2d, nn.Conv2d] = {}

    def conv_output(conv, args, output) -> None:
        produced[id(output)] = conv

    def batchnorm_input(bn, args) -> None:  # a pre-hook returning a value would replace the input
        if args and id(args[0]) in produced:
            pairs.setdefault(bn, produced[id(args[0])])

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_output))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(batchnorm_input))
    _forward_once(model, example, handles)
    with torch.no_grad():
        for bn, conv in pairs.items():
            if not bn.track_running_stats or bn.running_var is None:
                continue
            gain = (bn.weight if bn.affine else torch.ones_like(bn.running_var)) / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(gain.reshape(-1, *([1] * (conv.weight.dim() - 1))))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            folded = (bias - bn.running_mean) * gain + (bn.bias if bn.affine else 0)
            if conv.bias is not None:
                conv.bias.zero_()
            if bn.affine:
                bn.weight.fill_(1.0)
                bn.bias.copy_(folded)
            else:  # no bias to carry it: the convolution gets one only if it has one
                raise UsageError(f"--qat: {names[bn]} has no affine parameters to carry its folded bias")
            bn.running_mean.zero_()
            bn.running_var.fill_(_unit_variance(bn.eps, bn.running_var.dtype))
    return {names[bn]: names[conv] for bn, conv in pairs.items()}


def _forward_once(model: nn.Module, x: torch.Tensor, handles: list) -> None:
    """One forward without gradients, for the hooks in `handles`, which are removed after it."""
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def _unit_variance(eps: float, dtype: torch.dtype) -> float:
    """The variance v with v + eps == 1 exactly in `dtype`, so that 1 / sqrt(v + eps) is exactly 1."""
    v = torch.tensor(1.0, dtype=dtype) - eps
    one = torch.tensor(1.0, dtype=dtype)
    for _ in range(8):
        total = v + eps
        if total == one:
            break
        v = torch.nextafter(v, v + (one - total))
    return float(v)


# -- 2. reading the simulation off onnxruntime ----------------------------------------------------------
def weight_qmax(module: nn.Module, recipe: Int8Recipe) -> int:
    """The largest weight level the recipe gives this Conv/Linear (`onnx.int8.Quantizer`'s rule)."""
    depthwise = isinstance(module, nn.Conv2d) and module.groups > 1 and module.weight.shape[1] == 1
    if recipe.reduce_range and not (depthwise and recipe.depthwise_full_range):
        return 64
    return 127


def derive(model: nn.Module, calibration: np.ndarray, recipe: Int8Recipe, workdir: Path, *, folded: dict[str, str],
           crop_size: int, opset: int, exporter: str = "dynamo") -> SimSpec:
    """The simulation of `model` quantized by onnxruntime with `recipe`, calibrated on `calibration`
    (normalized float32 images [N, 3, S, S]); `folded`: what `fold_batchnorms(model, ...)` returned.

    The graph is the dynamo exporter's, which te export then writes for the run: measured on
    EfficientNet-Lite0, it pools in float (ReduceMean) where the TorchScript exporter's graph quantizes a
    GlobalAveragePool, whose integer kernel rounds differently from any float simulation (the int8 file agreed
    less with the simulation on the TorchScript graph than on the dynamo one: docs/export.md).

    Raises:
        UsageError: onnxruntime quantizes a tensor that no module call of `model` computes.
    """
    from transfer_engine.onnx.export import check_opset, export_classifier
    from transfer_engine.onnx.int8 import Quantizer

    fp32 = workdir / "qat-start.fp32.onnx"
    opset, exporter = check_opset(opset, exporter)
    exporter = export_classifier(model, fp32, crop_size=crop_size, opset=opset, exporter=exporter)
    quantizer = Quantizer(fp32, calibration, recipe, workdir, "images")
    qdq = workdir / "qat-start.int8.onnx"
    quantizer.quantize(qdq, [])
    quantized = activation_qparams(qdq)
    calls = match_tensors(model, quantizer.prepared, list(quantized), calibration[:MATCH_IMAGES])
    unmatched = [t for t in quantized if t not in calls]
    if unmatched:
        raise UsageError(f"--qat: onnxruntime quantizes {len(unmatched)} tensor(s) of this model that no module call "
                         f"computes (e.g. {', '.join(unmatched[:3])}): te cannot simulate its int8 model")
    points = [Point(calls[t][0], calls[t][1], *quantized[t], tensor=t) for t in quantized]
    layers, entry = _layers(model, points, recipe, folded, calibration[:1])
    return SimSpec(recipe.name, points, layers, sorted(folded), entry, opset, exporter)


def activation_qparams(qdq_model: Path) -> dict[str, tuple[float, int]]:
    """{tensor: (scale, zero point)} of every activation a QDQ model quantizes (per tensor), in graph order."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(qdq_model)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    found: dict[str, tuple[float, int]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in constants or node.input[1] not in constants:
            continue
        scale = constants[node.input[1]]
        zero = constants[node.input[2]] if len(node.input) > 2 and node.input[2] in constants else np.zeros(1, np.uint8)
        if scale.size == 1:
            found[node.input[0]] = (float(scale.reshape(())), int(zero.reshape(())))
    return found


def match_tensors(model: nn.Module, fp32_model: Path, tensors: list[str], images: np.ndarray
                  ) -> dict[str, tuple[str, int]]:
    """{ONNX tensor: (module path, call)}: the first module call (in the order calls finish, so the innermost
    module) whose output equals the tensor's values on `images`; the graph's input is INPUT_POINT.

    `fp32_model` is the float graph the tensors are named in (onnxruntime's quantizer renames a graph output
    it quantizes to NAME + OUTPUT_SUFFIX; that is read as NAME)."""
    import onnx
    from onnx import helper

    from transfer_engine.onnx.runtime import CPU, open_session

    graph_model = onnx.load(str(fp32_model))
    inputs = {i.name for i in graph_model.graph.input}
    named = float_names(graph_model, tensors)
    outputs = {o.name for o in graph_model.graph.output}
    for name in set(named.values()) - outputs - inputs:
        graph_model.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = Path(fp32_model).with_suffix(".probe.onnx")
    onnx.save(graph_model, str(probe))
    session = open_session(str(probe), CPU)
    x = np.ascontiguousarray(images, dtype=np.float32)
    values = dict(zip(session.output_names, session.run({session.input_names[0]: x})))
    values.update({name: x for name in inputs})

    seen: list[tuple[tuple[str, int], np.ndarray]] = []
    with _recording(model, seen), torch.no_grad():
        model(torch.from_numpy(x))
    found: dict[str, tuple[str, int]] = {}
    for tensor, name in named.items():
        if name in inputs:
            found[tensor] = (INPUT_POINT, 0)
            continue
        target = values[name]
        tolerance = 1e-4 * max(1.0, float(np.abs(target).max()))
        for call, out in seen:
            if out.shape == target.shape and np.allclose(out, target, rtol=1e-3, atol=tolerance):
                found[tensor] = call
                break
    probe.unlink(missing_ok=True)
    return found


def float_names(fp32_graph: Any, tensors: list[str]) -> dict[str, str]:
    """{tensor of the quantized graph: its name in the float graph}: onnxruntime's quantizer renames a graph
    output it quantizes to NAME + OUTPUT_SUFFIX; every other tensor keeps its name. (Its TensorQuantOverrides
    take the float graph's names: an override under the renamed name is silently not applied.)"""
    outputs = {o.name for o in fp32_graph.graph.output}
    return {t: (t[:-len(OUTPUT_SUFFIX)] if t.endswith(OUTPUT_SUFFIX) and t[:-len(OUTPUT_SUFFIX)] in outputs else t)
            for t in tensors}


class _recording:
    """Records (module path, call) -> output of every module call of one forward, in the order calls finish."""

    def __init__(self, model: nn.Module, into: list) -> None:
        self.model, self.into, self.handles = model, into, []

    def __enter__(self) -> None:
        counts: collections.Counter = collections.Counter()

        def hook(path):
            def record(module, args, output):
                if isinstance(output, torch.Tensor):
                    self.into.append(((path, counts[path]), output.detach().float().numpy().copy()))
                counts[path] += 1
            return record

        self.handles = [m.register_forward_hook(hook(p)) for p, m in self.model.named_modules()]

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def _layers(model: nn.Module, points: list[Point], recipe: Int8Recipe, folded: dict[str, str],
            image: np.ndarray) -> tuple[list[Layer], str]:
    """Each Conv2d/Linear with its weight grid, the module holding its bias (the BatchNorm folded into it,
    else its own), and the point its input is; and the entry (`SimSpec.entry`)."""
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    index = {(p.module, p.call): i for i, p in enumerate(points)}
    origin: dict[int, int] = {}          # id(tensor) -> point index, for the tensors a point produces
    reads: dict[str, int] = {}           # layer path -> point index of its input
    bias_of = {conv: bn for bn, conv in folded.items()}
    counts: collections.Counter = collections.Counter()
    handles = []

    def after(path):
        def hook(module, args, output):
            k = (path, counts[path])
            counts[path] += 1
            if isinstance(output, torch.Tensor):
                if k in index:
                    origin[id(output)] = index[k]
        return hook

    receivers: list[str] = []  # modules called with the image itself, outermost first

    def before(path):
        def hook(module, args):
            if args and args[0] is x:
                receivers.append(path)
            if isinstance(module, (nn.Conv2d, nn.Linear)) and args and id(args[0]) in origin:
                reads.setdefault(path, origin[id(args[0])])
        return hook

    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(before(path)))
        handles.append(module.register_forward_hook(after(path)))
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    if (INPUT_POINT, 0) in index:
        origin[id(x)] = index[(INPUT_POINT, 0)]
    _forward_once(model, x, handles)
    layers = []
    for path, module in modules.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear)) or module not in names:
            continue
        holder = bias_of.get(path) or (path if module.bias is not None else "")
        layers.append(Layer(path, weight_qmax(module, recipe), holder, reads.get(path, -1)))
    return layers, next((r for r in receivers if r), "")


# -- 3. the simulation ----------------------------------------------------------------------------------
class _WeightFakeQuant(nn.Module):
    """Per-output-channel symmetric fake quantization, scale = max |w| / qmax (straight-through)."""

    def __init__(self, qmax: int) -> None:
        super().__init__()
        self.qmax = qmax

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _fake_quant_weight(weight, self.qmax)


def _weight_scale(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    return (weight.detach().reshape(weight.shape[0], -1).abs().amax(1) / qmax).clamp_min(1e-12)


def _fake_quant_weight(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    scale = _weight_scale(weight, qmax).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight.float(), scale, zero, 0, -qmax, qmax).to(weight.dtype)


class _BiasFakeQuant(nn.Module):
    """int32 bias at scale input scale x weight scale, per output channel (straight-through)."""

    def __init__(self, layer: nn.Module, input_scale: float, qmax: int) -> None:
        super().__init__()
        self.layer = [layer]   # a list: not registered as a submodule (the layer owns this parametrization)
        self.input_scale, self.qmax = input_scale, qmax

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        weight = self.layer[0].weight
        scale = (_weight_scale(weight, self.qmax) * self.input_scale).to(bias.dtype)
        return bias + (torch.round(bias / scale) * scale - bias).detach()


class _Constant(nn.Module):
    """A folded BatchNorm's weight (1) or its convolution's own bias (0), whatever the optimizer does to the
    stored value: the folded bias lives in the BatchNorm's bias alone, as onnxruntime's fusion makes it one."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return torch.full_like(tensor, self.value)


# Modules that pass a convolution's result on unchanged but for a clamp: the integer accumulator goes through them
# to the point that quantizes it (a folded BatchNorm adds the bias the accumulator already holds).
_PASS_THROUGH = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Identity, nn.Dropout)


class QuantSim:
    """The int8 simulation of one model: `install` it, train or evaluate, then `remove` it.

    While installed, every forward of the model computes what onnxruntime's int8 model of it computes. Two
    arithmetics (docs/export.md, "The kernels' arithmetic can be reproduced exactly"):
    - training (the model in train mode, or gradients recorded): fake quantization in float32 with
      straight-through gradients. Each convolution sums float products of the dequantized values, which differs
      from the kernels' integer sum now and then by one step, and such steps grow through the layers;
    - evaluation (`exact`, the model in eval mode and no gradient recorded): onnxruntime's integer arithmetic.
      Each Conv2d/Linear sums the integers exactly (in float64) with its int32 bias, and the point that
      quantizes its result requantizes as the kernels do, round_half_even(float32(acc) x M) + zero point with
      M = float32(float32(input scale x weight scale) / output scale); a residual sum of two quantized tensors
      as QLinearAdd does; every other quantization divides by the scale, as QuantizeLinear: the int8 file's
      logits, bit for bit, where the kernels are exact.
    """

    def __init__(self, model: nn.Module, spec: SimSpec, exact: bool = True) -> None:
        self.model, self.spec, self.exact = model, spec, exact
        self.handles: list[Any] = []
        self.parametrized: list[tuple[nn.Module, str]] = []
        self.counts: collections.Counter = collections.Counter()
        # The exact evaluation's state, for one forward (cleared when it starts), keyed by tensor identity. An
        # entry goes when its tensor does: holding every activation of a forward until its end pages in gigabytes
        # at a batch of 64 and slows the evaluation down severalfold.
        self._accumulated = WeakIdKeyDictionary()  # tensor -> (integer accumulator, input x weight scale, lo, hi)
        self._quantized = WeakIdKeyDictionary()    # a point's output -> (its Point, its integers less the zero point)
        self._last: tuple | None = None            # the latest (tensor, Point, integers)

    def install(self) -> "QuantSim":
        modules = dict(self.model.named_modules())
        points = {(p.module, p.call): p for p in self.spec.points}
        missing = sorted({p.module for p in self.spec.points if p.module != INPUT_POINT and p.module not in modules}
                         | {layer.module for layer in self.spec.layers if layer.module not in modules}
                         | ({self.spec.entry} - set(modules)))
        if missing:
            raise UsageError(f"the int8 simulation names modules this model does not have: {', '.join(missing[:3])}")
        folded = {layer.bias for layer in self.spec.layers if layer.bias in self.spec.folded}
        for layer in self.spec.layers:
            if layer.bias in folded:
                self._parametrize(modules[layer.bias], "weight", _Constant(1.0))
                if getattr(modules[layer.module], "bias", None) is not None:
                    self._parametrize(modules[layer.module], "bias", _Constant(0.0))
        for layer in self.spec.layers:
            module = modules[layer.module]
            if layer.bias and layer.input >= 0:
                holder = modules[layer.bias]
                self._parametrize(holder, "bias", _BiasFakeQuant(module, self.spec.points[layer.input].scale,
                                                                layer.qmax))
            self._parametrize(module, "weight", _WeightFakeQuant(layer.qmax))
        counts = self.counts

        def reset(module, args):
            counts.clear()
            self._accumulated.clear()
            self._quantized.clear()
            self._last = None
            entry = points.get((INPUT_POINT, 0))
            if entry is None or not args:
                return None
            if self._exact_now() and _is_float(args[0]):
                return (self._remember(_quantize_integers(args[0], entry), entry, args[0].dtype), *args[1:])
            return (_fake_quant_activation(args[0], entry), *args[1:])

        self.handles.append(modules[self.spec.entry].register_forward_pre_hook(reset))
        # the exact evaluation's hooks only where it can run (not on a simulation made for training alone)
        for layer in self.spec.layers if self.exact else ():  # before the points' hooks: a Linear can be a point
            if layer.input >= 0 and _exact_form(modules[layer.module]):
                self.handles.append(modules[layer.module].register_forward_hook(self._accumulate_hook(layer, modules)))
        pointed = {p.module for p in self.spec.points}
        for path, module in modules.items():
            if path in pointed:
                self.handles.append(module.register_forward_hook(self._activation_hook(path, points)))
            elif self.exact and isinstance(module, _PASS_THROUGH):
                self.handles.append(module.register_forward_hook(lambda m, a, out: self._carry(m, a, out)))
        return self

    def _exact_now(self) -> bool:
        return self.exact and not self.model.training and not torch.is_grad_enabled()

    def _activation_hook(self, path: str, points: dict):
        counts = self.counts

        def hook(module, args, output):
            call = counts[path]
            counts[path] += 1
            point = points.get((path, call))
            if point is None:
                return None
            if not self._exact_now():
                return _fake_quant_activation(output, point)
            if not _is_float(output):
                return None
            self._carry(module, args, output)
            return self._remember(self._requantize(args, output, point), point, output.dtype)
        return hook

    # -- the exact evaluation --------------------------------------------------------------------------
    def _remember(self, integers: torch.Tensor, point: Point, dtype: torch.dtype) -> torch.Tensor:
        """The point's output, dequantized from its `integers` (less the zero point), which are kept with it."""
        tensor = (integers * torch.tensor(point.scale, dtype=torch.float32)).to(dtype)
        self._quantized[tensor] = (point, integers)
        self._last = (tensor, point, integers)
        return tensor

    def _accumulate_hook(self, layer: Layer, modules: dict[str, nn.Module]):
        input_scale = self.spec.points[layer.input].scale

        def hook(module, args, output):
            quantized = self._quantized.get(args[0]) if self._exact_now() and args else None
            if quantized is None:
                return None
            # Integer sums, exact: in float32 when no partial sum can reach 2^24, else in float64 (below 2^53
            # whatever the layer). A partial sum of an output channel is at most 255 (|input| less its zero
            # point) times the sum of |weight| over the channel's integer weights.
            point, integers = quantized
            if point.scale != input_scale:  # not the point the layer reads: its values on the layer's grid
                integers = torch.round(args[0].float() / input_scale)
            weight_scale = _weight_scale(module.parametrizations.weight.original, layer.qmax).float()
            shape = (-1, *([1] * (module.weight.dim() - 1)))
            w = torch.round(module.weight.double() / weight_scale.double().reshape(shape))
            bound = 255 * w.abs().reshape(len(w), -1).sum(1)  # per output channel
            exact = torch.float32 if float(bound.max()) < 2 ** 24 else torch.float64
            w, x = w.to(exact), integers.to(exact)  # x: the input's integers, less its zero point
            scales = torch.tensor(input_scale, dtype=torch.float32) * weight_scale  # a float32 product, as onnxruntime
            acc = (torch.nn.functional.linear(x, w) if isinstance(module, nn.Linear) else
                   module._conv_forward(_padded(module, x), w, None))
            if layer.bias:  # the int32 bias, added in place where the sums stay exact in acc's type, else in int32
                bias = torch.round(modules[layer.bias].bias.double() / scales.double())
                limit = 2 ** 24 if acc.dtype == torch.float32 else 2 ** 53
                bias = bias.reshape(1, -1, *([1] * (acc.dim() - 2)))
                acc = (acc.add_(bias.to(acc.dtype)) if float((bound + bias.abs().reshape(-1)).max()) < limit else
                       acc.to(torch.int32).add_(bias.to(torch.int32)))
            self._accumulated[output] = (acc, scales, None, None)
        return hook

    def _carry(self, module: nn.Module, args: tuple, output: Any) -> None:
        """A pass-through module: its output is its input's accumulator, clamped where it clamps."""
        carried = self._accumulated.get(args[0]) if isinstance(module, _PASS_THROUGH) and args else None
        if carried is None:
            return
        acc, scales, lo, hi = carried
        if isinstance(module, (nn.ReLU, nn.Hardtanh)):  # ReLU6 is a Hardtanh from 0 to 6
            low, high = (0.0, None) if isinstance(module, nn.ReLU) else (module.min_val, module.max_val)
            lo = low if lo is None else max(lo, low)
            hi = high if hi is None else (hi if high is None else min(hi, high))
        self._accumulated[output] = (acc, scales, lo, hi)

    def _requantize(self, args: tuple, output: torch.Tensor, point: Point) -> torch.Tensor:
        """The point's integers (less its zero point) as onnxruntime's kernels compute them."""
        scale, zero = torch.tensor(point.scale, dtype=torch.float32), point.zero_point
        carried = self._accumulated.get(output)
        if carried is not None:  # QLinearConv, QGemm: the integer sum requantized, round(acc x M) + zero point
            acc, scales, lo, hi = carried
            multiplier = (scales / scale).reshape(1, -1, *([1] * (acc.dim() - 2)))
            low = 0.0 if lo is None else max(0.0, float(torch.round(torch.tensor(lo, dtype=torch.float32) / scale))
                                                 + zero)
            high = 255.0 if hi is None else min(255.0, float(torch.round(torch.tensor(hi, dtype=torch.float32) / scale))
                                                + zero)
            return torch.mul(acc.float(), multiplier).round_().clamp_(low - zero, high - zero)
        if (added := self._residual(args, output)) is not None:  # QLinearAdd, in float32, the zero point added
            (a, pa), (b, pb) = added                                # before rounding
            t = torch.mul(a, torch.tensor(pa.scale, dtype=torch.float32) / scale)
            t.add_(torch.mul(b, torch.tensor(pb.scale, dtype=torch.float32) / scale))
            return t.add_(zero).round_().clamp_(0, 255).sub_(zero)
        return _quantize_integers(output, point)  # QuantizeLinear of a float result (a pooling, say)

    def _residual(self, args: tuple, output: torch.Tensor) -> tuple | None:
        """The integers and Points of the two quantized tensors whose sum `output` is (a block's input and the
        latest point within it), or None when it is not such a sum."""
        outer = self._quantized.get(args[0]) if args and self._last is not None else None
        if outer is None:
            return None
        inner, block_input = self._last, args[0]
        if inner[0] is block_input or inner[0].shape != output.shape or block_input.shape != output.shape:
            return None
        if not torch.allclose(inner[0].float() + block_input.float(), output.float(), rtol=0,
                              atol=0.25 * min(inner[1].scale, outer[0].scale)):
            return None
        return (inner[2], inner[1]), (outer[1], outer[0])

    def _parametrize(self, module: nn.Module, name: str, fn: nn.Module) -> None:
        parametrize.register_parametrization(module, name, fn)
        self.parametrized.append((module, name))

    def remove(self) -> None:
        """Take the simulation out, leaving every weight and bias at its quantized value (on its grid)."""
        for h in self.handles:
            h.remove()
        self.handles = []
        with torch.no_grad():
            for module, name in reversed(self.parametrized):
                if parametrize.is_parametrized(module, name):
                    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        self.parametrized = []

    def __enter__(self) -> "QuantSim":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()


def _fake_quant_activation(x: torch.Tensor, point: Point) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return x
    return torch.fake_quantize_per_tensor_affine(x.float(), point.scale, point.zero_point, 0, 255).to(x.dtype)


def _quantize_integers(x: torch.Tensor, point: Point) -> torch.Tensor:
    """QuantizeLinear as onnxruntime computes it, its integers less the zero point: x divided by the scale in
    float32 (PyTorch's fake quantization multiplies by its inverse, which rounds differently now and then)."""
    scale = torch.tensor(point.scale, dtype=torch.float32)
    return torch.div(x.float(), scale).round_().clamp_(-point.zero_point, 255 - point.zero_point)


def _padded(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input as the convolution sees it: EfficientNet-Lite's convolutions pad it first (zeros: the zero point
    of integers less their zero point)."""
    return conv.static_padding(x) if hasattr(conv, "static_padding") else x


def _is_float(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _exact_form(module: nn.Module) -> bool:
    """Whether the exact evaluation knows how `module` computes: a Linear, or a Conv2d whose forward is
    PyTorch's own (or EfficientNet-Lite's, which pads with its `static_padding` first). Any other layer is
    evaluated in float, as in training."""
    if isinstance(module, nn.Linear):
        return _unparametrized(module).forward is nn.Linear.forward
    if not isinstance(module, nn.Conv2d):
        return False
    forward = _unparametrized(module).forward
    return forward is nn.Conv2d.forward or hasattr(module, "static_padding")


def _unparametrized(module: nn.Module) -> type:
    """The module's class before torch.nn.utils.parametrize subclassed it."""
    cls = type(module)
    return cls.__bases__[0] if parametrize.is_parametrized(module) and cls.__bases__ else cls



def tensor_overrides(model: nn.Module, spec: SimSpec, fp32_model: Path, qdq_model: Path, images: np.ndarray
                     ) -> dict[str, tuple[float, int]]:
    """{tensor of the float graph: (scale, zero point)} that make onnxruntime's quantization of `fp32_model`
    (`qdq_model`, quantized with the spec's recipe) compute the simulation `spec` of `model`: each tensor it
    quantizes, matched to its module call, takes that call's scale and zero point. Keyed by the float graph's
    names (`float_names`), which TensorQuantOverrides reads: the graph's outputs too.

    Raises:
        UsageError: a quantized tensor the simulation has no point for (not the model QAT trained).
    """
    import onnx

    quantized = activation_qparams(qdq_model)
    calls = match_tensors(model, fp32_model, list(quantized), images[:MATCH_IMAGES])
    by_call = {(p.module, p.call): p for p in spec.points}
    missing = [t for t in quantized if calls.get(t) not in by_call]
    if missing:
        raise UsageError(f"the int8 simulation this run was trained with has no scale for {len(missing)} tensor(s) "
                         f"onnxruntime quantizes (e.g. {', '.join(missing[:3])}): this graph is not the one QAT read "
                         f"its scales from ({spec.graph})")
    named = float_names(onnx.load(str(fp32_model)), list(quantized))
    return {named[t]: (by_call[calls[t]].scale, by_call[calls[t]].zero_point) for t in quantized}


__all__ = ["EXACT_BATCH", "INPUT_POINT", "Layer", "Point", "QuantSim", "SimSpec", "activation_qparams", "derive",
           "fold_batchnorms", "match_tensors", "tensor_overrides", "weight_qmax"]
