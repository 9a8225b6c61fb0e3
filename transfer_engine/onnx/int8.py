"""int8 with onnxruntime's own tools: one model quantized with an `Int8Recipe`, calibrated once, re-quantized
with any set of nodes kept in float, and measured (the recipes: `onnx.recipes`).

`quant_pre_process` (symbolic shape inference and onnxruntime's basic graph optimizations), then
`quantize_static` in QDQ format, calibrated (min/max) on real images. `Quantizer` also ranks the
quantized nodes in groups by what each costs the output when it alone is int8, and times int8 against
fp32: what te export's accuracy budget (`export.int8_budget`) searches with. `quantize_fully` is every
node in int8 (what te compare's --int8 column measures). docs/export.md has the measurements behind
these choices.
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from transfer_engine.errors import TEError, first_line
from transfer_engine.onnx.quantize import QuantizationError
from transfer_engine.onnx.recipes import Int8Recipe
from transfer_engine.onnx.runtime import CPU, import_ort, open_session, quiet_stdout, run_grouped

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
SENSITIVITY_IMAGES = 8     # images the per-node errors are measured on (every activation is kept in memory)
ISOLATED_IMAGES = 32       # images each group's end-to-end cost is measured on (one quantization per group)
SPEED_BATCHES = (1, 32)    # the batch sizes int8 must beat fp32 at: one request, and a batch of them
SPEED_ROUND_IMAGES = 32    # images each timing round runs at every batch size


def quantize_fully(fp32_model: Path, out: Path, calibration: np.ndarray, *, recipe: Int8Recipe, workdir: Path,
                   input_name: str = "images") -> None:
    """Quantize every node of `fp32_model` to int8 with `recipe`, calibrated on `calibration` (what te
    compare's --int8 column measures; no gate, no float nodes).

    Raises:
        QuantizationError: onnxruntime's tools failed.
    """
    import_ort()
    Quantizer(fp32_model, calibration, recipe, workdir, input_name).quantize(out, [])



def int8_nodes(model: Path) -> int:
    """How many nodes of a QDQ model compute in int8 (Q/DQ themselves not counted): a Conv, Gemm or MatMul
    whose weights are dequantized, any other node whose every non-constant input is. (A node left in
    float still reads the DQ output of the int8 node before it: that alone does not make it int8.)"""
    import onnx

    graph = onnx.load(str(model)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    constants = {t.name for t in graph.initializer}

    def int8(node) -> bool:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in dequantized:
            return node.input[0] in dequantized
        inputs = [i for i in node.input if i and i not in constants]
        return node.op_type not in WEIGHTED_OPS and bool(inputs) and all(i in dequantized for i in inputs)

    return sum(1 for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear") and int8(n))


def _depthwise_weights(model: Path) -> list[str]:
    """The weight initializers of `model`'s depthwise convolutions (a Conv with one input channel per group
    and more than one group)."""
    import onnx

    graph = onnx.load(str(model)).graph
    weights = {t.name: t for t in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        if group > 1 and weights[node.input[1]].dims[1] == 1:
            found.append(node.input[1])
    return found


def _keep_in_float(qdq_model: Path, float_nodes: set[str]) -> None:
    """Make sure the Conv and Gemm nodes kept in float stay float when onnxruntime loads `qdq_model`.

    onnxruntime's `WeightBiasQuantization` graph optimization (basic level, on by default) takes a Conv or
    Gemm with a float weight whose input comes from a per-tensor DequantizeLinear and whose output leads to
    a QuantizeLinear (through Relu/Clip) for a node someone forgot to quantize, and quantizes its weight:
    symmetric 8-bit, **per tensor**. That is exactly the shape of a node te keeps in float between int8
    neighbours: te's float node became an int8 node with far coarser weights than the int8 ones around it
    (a depthwise conv's channels differ by orders of magnitude), and 8-bit weights in a GEMM conv are the
    ones that saturate without VNNI (docs/export.md, "The accuracy budget", has the measurement).

    The condition it checks is a per-tensor (scalar) DequantizeLinear scale on the node's input. So each
    float Conv/Gemm reading a scalar DequantizeLinear gets a dedicated copy of it whose scale and zero point
    are repeated once per input channel (axis 1): the same values, exactly, but not a scalar; onnxruntime's
    int8 kernels never take such a node, so it runs in float, as te chose."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(qdq_model))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    added: list = []
    for node in graph.node:
        if node.name not in float_nodes or node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        dq = producer.get(node.input[0])
        weight = constants.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or weight is None or dq.input[1] not in constants:
            continue
        scale = numpy_helper.to_array(constants[dq.input[1]])
        if scale.size != 1:
            continue
        if node.op_type == "Conv":
            group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
            channels = int(weight.dims[1]) * int(group)
        else:
            trans_b = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "transB"), 0)
            channels = int(weight.dims[1] if trans_b else weight.dims[0])
        stem = f"{node.name}_float_input"
        inputs = [dq.input[0], f"{stem}_scale"]
        graph.initializer.append(numpy_helper.from_array(np.full(channels, scale.reshape(()), scale.dtype),
                                                         f"{stem}_scale"))
        if len(dq.input) > 2 and dq.input[2] in constants:
            zero = numpy_helper.to_array(constants[dq.input[2]])
            graph.initializer.append(numpy_helper.from_array(np.full(channels, zero.reshape(()), zero.dtype),
                                                             f"{stem}_zero_point"))
            inputs.append(f"{stem}_zero_point")
        added.append(helper.make_node("DequantizeLinear", inputs, [f"{stem}_dq"], name=f"{stem}_DequantizeLinear",
                                      axis=1))
        node.input[0] = f"{stem}_dq"
    if added:
        graph.node.extend(added)
        nodes = list(graph.node)  # keep the graph in topological order: each new DQ just before its reader
        order = {n.name: i for i, n in enumerate(nodes)}
        reader = {f"{n.name}_float_input_dq": n.name for n in nodes if n.name in float_nodes}
        nodes.sort(key=lambda n: order[reader[n.output[0]]] - 0.5 if n.output and n.output[0] in reader
                   else order[n.name])
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.save(model, str(qdq_model))


def _quantized_ranges(qdq_model: Path) -> dict[str, tuple[float, float]]:
    """{tensor: (lowest, highest) value its QuantizeLinear can represent} of a QDQ model's activations."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(qdq_model)).graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    ranges: dict[str, tuple[float, float]] = {}
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in constants:
            continue
        scale = constants[node.input[1]].astype(np.float64)
        zero = constants.get(node.input[2]) if len(node.input) > 2 else None
        if scale.size != 1 or (zero is not None and zero.size != 1):
            continue  # per-channel (weights): not an activation
        info = np.iinfo(zero.dtype) if zero is not None else np.iinfo(np.uint8)
        z = float(zero) if zero is not None else 0.0
        ranges[node.input[0]] = ((info.min - z) * float(scale), (info.max - z) * float(scale))
    return ranges


def _agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    return float((logits.argmax(1) == reference.argmax(1)).mean())


class Quantizer:
    """onnxruntime's static quantization of one model, calibrated once, re-run with other float nodes."""

    def __init__(self, fp32_model: Path, calibration: np.ndarray, recipe: Int8Recipe, workdir: Path,
                 input_name: str) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # activations whose scale and zero point are given, not calibrated (a QAT run's: `set_activations`)
        self.activations: dict[str, tuple[float, int]] = {}
        self.fp32 = Path(fp32_model)
        self.calibration = np.ascontiguousarray(calibration, dtype=np.float32)
        self.recipe = recipe
        self.workdir = workdir
        self.input_name = input_name
        self.prepared = workdir / "prepared.onnx"
        self.cache = workdir / "calibration.json"
        with _tool_errors("int8"), quiet_stdout():
            quant_pre_process(str(self.fp32), str(self.prepared))
        # onnxruntime's per-tensor exceptions to the recipe's weight range (computed once, used by every quantize)
        self.weight_overrides: dict[str, list[dict[str, Any]]] = {}
        if recipe.reduce_range and recipe.depthwise_full_range:
            axis = {"axis": 0} if recipe.per_channel else {}
            self.weight_overrides = {w: [{"reduce_range": False, **axis}] for w in _depthwise_weights(self.prepared)}

    def set_activations(self, qparams: dict[str, tuple[float, int]]) -> None:
        """Quantize these activations {tensor: (scale, uint8 zero point)} at the given values instead of the
        calibrated ones (the scales a QAT run trained with: `onnx.simulate.tensor_overrides`)."""
        self.activations = dict(qparams)

    def quantize(self, out: Path, float_nodes: Sequence[str]) -> None:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        kwargs: dict[str, Any] = {}
        # Calibrate once: onnxruntime >= 1.23 keeps the ranges in a file; older ones recalibrate each time.
        if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            kwargs["calibration_cache_path"] = str(self.cache)
        overrides = {**self.weight_overrides,
                     **{t: [{"scale": np.array(s, np.float32), "zero_point": np.array(z, np.uint8)}]
                        for t, (s, z) in self.activations.items()}}
        if overrides:
            kwargs["extra_options"] = {"TensorQuantOverrides": overrides}
        with _tool_errors("int8"), quiet_stdout():
            quantize_static(str(self.prepared), str(out), self._reader(), quant_format=QuantFormat.QDQ,
                            per_channel=self.recipe.per_channel, reduce_range=self.recipe.reduce_range,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(float_nodes), **kwargs)
        if float_nodes:
            _keep_in_float(out, set(float_nodes))

    def _reader(self, limit: int | None = None):
        from onnxruntime.quantization import CalibrationDataReader

        batches = [self.calibration[i:i + 16] for i in range(0, len(self.calibration[:limit]), 16)]
        name = self.input_name

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(batches)

            def get_next(self):
                batch = next(self.items, None)
                return None if batch is None else {name: batch}

        return Reader()

    def logits(self, model: Path, output_name: str, limit: int | None = None,
               images: np.ndarray | None = None) -> np.ndarray:
        """`output_name` of `model` on the (first `limit`) calibration images, or on `images`."""
        session = open_session(str(model), CPU)
        chosen = self.calibration[:limit] if images is None else images
        (logits,) = run_grouped(session, list(chosen), 32, outputs=[output_name])
        return logits

    def rank_groups(self, qdq_model: Path, output_name: str, reference: np.ndarray) -> list[dict[str, Any]]:
        """The quantized nodes in groups, the most costly end to end first (`isolated_errors`; `reference`:
        the fp32 model's `output_name` on the calibration images).

        A group is a weighted node (Conv, Gemm, MatMul) with the nodes that follow it on its first input
        until the next weighted one (its activation, a residual Add, a pool): kept in float together, so
        that no int8 tensor is left between a float node and its float activation (excluding nodes one
        by one made agreement fall on the way: docs/export.md, "The accuracy budget").
        Each group also reports "rounding_error", the worst of its outputs, |after - before| / |before| of
        each tensor in the QDQ model (fake quantization, graph optimizations off, a few calibration
        images), and "writes_output". Those two ranked the groups before: a local measure, blind to how
        later layers amplify a group's error (see `isolated_errors`); ranking by the error accumulated
        against the float model kept the wrong nodes float too."""
        import onnx
        from onnxruntime.quantization.qdq_loss_debug import (collect_activations, create_activation_matching,
                                                             modify_model_output_intermediate_tensors)

        n = min(SENSITIVITY_IMAGES, len(self.calibration))
        with _tool_errors("int8 sensitivity"), quiet_stdout():
            qdq_aug = self.workdir / "qdq.debug.onnx"
            modify_model_output_intermediate_tensors(str(qdq_model), str(qdq_aug))
            matching = create_activation_matching(collect_activations(str(qdq_aug), self._reader(n)))
        ranges = _quantized_ranges(qdq_model)
        rounding: dict[str, float] = {}  # what rounding this tensor alone costs: |post - pre| / |pre|
        for tensor, match in matching.items():
            pre = np.concatenate([a.ravel() for a in match["pre_qdq"]]).astype(np.float64)
            post = np.concatenate([a.ravel() for a in match["post_qdq"]]).astype(np.float64)
            # A ReLU/Clip the quantizer folded into its input's quantization leaves that tensor unclipped
            # before Q and clipped after it: the clip is the float model's own, not rounding error
            # (unclipped, every ReLU6 of EfficientNet-Lite0 came out as the worst and ranked first).
            low, high = ranges.get(tensor, (-np.inf, np.inf))
            pre = np.clip(pre, low, high)
            rounding[tensor] = float(np.linalg.norm(post - pre) / max(np.linalg.norm(pre), 1e-30))

        graph = onnx.load(str(self.prepared)).graph
        constants = {t.name for t in graph.initializer}
        producer = {o: n for n in graph.node for o in n.output}
        groups: dict[str, dict[str, Any]] = {}
        owner: dict[str, str] = {}  # node -> the weighted node whose group it joins
        for node in graph.node:     # graph order is topological: a producer's group is known first
            if not node.name or not node.output:
                continue
            if node.op_type in WEIGHTED_OPS and any(i in constants for i in node.input[1:2]):
                owner[node.name] = node.name
                groups[node.name] = {"node": node.name, "op": node.op_type, "nodes": [node.name],
                                     "rounding_error": rounding.get(node.output[0], 0.0)}
                continue
            source = producer.get(node.input[0]) if node.input else None
            if source is None or source.name not in owner:
                continue
            owner[node.name] = owner[source.name]
            group = groups[owner[node.name]]
            if node.output[0] in rounding:  # an activation, Add, pool... whose output int8 rounds
                group["nodes"].append(node.name)
                group["rounding_error"] = max(group["rounding_error"], rounding[node.output[0]])
        outputs = {o.name for o in graph.output}
        nodes = {n.name: n for n in graph.node}
        for group in groups.values():
            group["writes_output"] = any(o in outputs for n in group["nodes"] for o in nodes[n].output)
        ranked = list(groups.values())
        self.isolated_errors(ranked, output_name, reference)
        return sorted(ranked, key=lambda g: -g["isolated_error"])

    def isolated_errors(self, groups: list[dict[str, Any]], output_name: str, reference: np.ndarray) -> None:
        """Set each group's "isolated_error": the mean |output - fp32 output| / mean |fp32 output| on the
        first ISOLATED_IMAGES calibration images of the model in which that group alone is int8.

        What a group's int8 costs the output, with the amplification of every layer after it. The local
        rounding error of `rank_groups` is blind to that: on EfficientNet-Lite0 the stem and first blocks
        round least yet, int8 alone, cost the most, so ranking by rounding error kept nearly every group
        float without meeting the gate, while ranking by this met it with a few (docs/export.md, "The
        accuracy budget"). One quantization per group."""
        every = [n for g in groups for n in g["nodes"]]
        scratch = self.workdir / "isolated.onnx"
        ref = reference[:ISOLATED_IMAGES].astype(np.float64)
        scale = max(float(np.abs(ref).mean()), 1e-30)
        for group in groups:
            own = set(group["nodes"])
            self.quantize(scratch, [node for node in every if node not in own])
            out = self.logits(scratch, output_name, ISOLATED_IMAGES).astype(np.float64)
            group["isolated_error"] = float(np.abs(out - ref).mean() / scale)

    def speed(self, int8_model: Path, min_speedup: float) -> dict[str, Any]:
        """fp32 and int8 images/s at each of SPEED_BATCHES on the CPU provider, timed alternately in this
        process (batch 1: one image per call, as a server answering single requests runs it)."""
        sessions = {"fp32": open_session(str(self.fp32), CPU), "int8": open_session(str(int8_model), CPU)}
        batches: dict[str, dict[str, float]] = {}
        for size in SPEED_BATCHES:
            x = np.ascontiguousarray(np.resize(self.calibration, (size, *self.calibration.shape[1:])))
            calls = max(1, SPEED_ROUND_IMAGES // size)
            best = {k: math.inf for k in sessions}
            for _ in range(4):  # the first round warms up; the best of the others is kept
                for k, s in sessions.items():
                    t = time.perf_counter()
                    for _call in range(calls):
                        s.run({self.input_name: x})
                    best[k] = min(best[k], (time.perf_counter() - t) / calls)
            fp32, int8 = size / best["fp32"], size / best["int8"]
            batches[str(size)] = {"fp32_images_per_second": fp32, "int8_images_per_second": int8,
                                  "speedup": int8 / fp32}
        return {"batches": batches, "speedup": min(b["speedup"] for b in batches.values()),
                "min_speedup": min_speedup}


class _tool_errors:
    """onnxruntime's tools fail with every kind of exception: one QuantizationError line instead."""

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or isinstance(exc, TEError) or not isinstance(exc, Exception):
            return False
        raise QuantizationError(f"onnxruntime could not quantize the model ({self.what}): {first_line(exc)}") from exc


__all__ = ["QuantizationError", "Quantizer", "int8_nodes", "quantize_fully"]
