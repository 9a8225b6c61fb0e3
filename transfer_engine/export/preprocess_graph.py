"""Preprocessing as ONNX: uint8 RGB images -> the normalized tensor the model takes, inside the graph.

It reproduces `PreprocessSpec.transform()` (torchvision on a PIL image) step by step:

    resize     shorter side -> resize_size, the longer int(resize_size * long / short), as torchvision;
               PIL resamples width first, then height, rounding to uint8 in between and at the end:
               two Resize nodes, each followed by floor(x + 0.5) and a clip to 0..255.
               PIL's filters: bilinear = linear with antialias; bicubic = cubic with a = -0.5 and
               antialias; both on half-pixel centres with out-of-image taps dropped (exclude_outside);
               nearest = PIL's own source-pixel indices, computed in double precision (see _nearest).
    crop       top = round((h - crop) / 2) with ties to even, as Python's round() (ONNX Round does that)
    normalize  x * (1/255), minus mean, divided by std, in that order (torchvision's float operations)

Bilinear and bicubic give PIL's uint8 pixels up to 1 level on a small fraction of them (PIL's
fixed-point weights); nearest gives PIL's pixels exactly (docs/export.md, "What is checked, and the
tolerances"). The parity report measures this on the check images, and `te export` fails when it is
worse.

All images of one batch must have the same height and width (a tensor); any size works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from transfer_engine.core.choices import LAYOUTS
from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    import onnx

    from transfer_engine.backbones.spec import PreprocessSpec

MIN_OPSET = 18  # Resize's antialias attribute
OUTPUT = "pixels"


class _Graph:
    """Nodes and constants of the preprocessing graph, all named "preprocess/..." (no clash when joined)."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value, dtype) -> str:
        from onnx import numpy_helper

        full = f"preprocess/{name}"
        self.inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), full))
        return full

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None, **attrs) -> str:
        from onnx import helper

        out = output or f"preprocess/{name}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"preprocess/{name}", **attrs))
        return out

    def slice1(self, x: str, start: int, name: str) -> str:
        """x[start:start + 1] of a 1-D tensor."""
        return self.node("Slice", [x, self.const(f"{name}_from", [start], np.int64),
                                   self.const(f"{name}_to", [start + 1], np.int64)], name)


def preprocess_model(spec: "PreprocessSpec", layout: str, opset: int, ir_version: int | None = None,
                     input_name: str = "images") -> "onnx.ModelProto":
    """A model: uint8 images [batch, H, W, 3] (nhwc) or [batch, 3, H, W] (nchw) -> float32 "pixels"
    [batch, 3, crop, crop], normalized as `spec.transform()` does.

    Args:
        spec: the preprocessing to reproduce.
        layout: "nhwc" (numpy/PIL/OpenCV arrays) or "nchw".
        opset: the ONNX opset (>= 18).
        ir_version: the IR version to declare (that of the model it will be joined to).
        input_name: the graph input's name.

    Returns:
        The checked ONNX model.

    Raises:
        UsageError: an opset below 18 or an unknown layout.
    """
    import onnx
    from onnx import TensorProto, helper

    if opset < MIN_OPSET:
        raise UsageError(f"--preprocess needs --opset {MIN_OPSET} or later (antialiased Resize), got {opset}")
    if layout not in LAYOUTS:
        raise UsageError(f"--layout {layout!r}: expected {' or '.join(LAYOUTS)}")
    g = _Graph()
    x = g.node("Cast", [input_name], "float", to=TensorProto.FLOAT)
    if layout == "nhwc":
        x = g.node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    shape = g.node("Shape", [x], "shape")
    hw = g.node("Slice", [shape, g.const("from2", [2], np.int64), g.const("to4", [4], np.int64)], "hw")
    short = g.node("ReduceMin", [hw], "short", keepdims=1)
    # int(R * long / short) and R for the short side, in exact integer arithmetic (Div of int64 floors)
    new_hw = g.node("Div", [g.node("Mul", [hw, g.const("resize", [spec.resize_size], np.int64)], "r_hw"), short],
                    "new_hw")
    if spec.interpolation == "nearest":
        x = _nearest(g, x, shape, new_hw)
    else:
        x = _resample(g, x, shape, new_hw, spec.interpolation)
    crop = spec.crop_size
    excess = g.node("Cast", [g.node("Sub", [new_hw, g.const("crop_size", [crop], np.int64)], "excess")], "excess_f",
                    to=TensorProto.FLOAT)
    half_excess = g.node("Div", [excess, g.const("two", 2.0, np.float32)], "half_excess")
    start = g.node("Cast", [g.node("Round", [half_excess], "top_left")], "start", to=TensorProto.INT64)
    end = g.node("Add", [start, g.const("crop_hw", [crop, crop], np.int64)], "end")
    x = g.node("Slice", [x, start, end, g.const("axes", [2, 3], np.int64)], "crop")
    x = g.node("Mul", [x, g.const("inv255", 1.0 / 255.0, np.float32)], "scale")
    x = g.node("Sub", [x, g.const("mean", np.array(spec.mean).reshape(1, 3, 1, 1), np.float32)], "centre")
    g.node("Div", [x, g.const("std", np.array(spec.std).reshape(1, 3, 1, 1), np.float32)], "normalize", OUTPUT)
    shape_in = ["batch", "height", "width", 3] if layout == "nhwc" else ["batch", 3, "height", "width"]
    graph = helper.make_graph(g.nodes, "te_preprocess",
                              [helper.make_tensor_value_info(input_name, TensorProto.UINT8, shape_in)],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 3, crop, crop])],
                              g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="transfer_engine")
    if ir_version is not None:
        model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def _resample(g: _Graph, x: str, shape: str, new_hw: str, interpolation: str) -> str:
    """PIL's bilinear/bicubic resize: width pass, round to uint8 levels, height pass, round again."""
    attrs = dict(mode="linear" if interpolation == "bilinear" else "cubic", antialias=1,
                 coordinate_transformation_mode="half_pixel", exclude_outside=1, cubic_coeff_a=-0.5)
    # Full 4-D sizes rather than the `axes` attribute: onnxruntime's NHWC layout optimization (used with
    # int8 models on the CPU) moves Transposes across Resize and mishandles `axes` (1.32: a load error).
    n_c = g.node("Slice", [shape, g.const("k0", [0], np.int64), g.const("k2", [2], np.int64)], "n_c")
    new_h, new_w = g.slice1(new_hw, 0, "new_h"), g.slice1(new_hw, 1, "new_w")
    sizes_w = g.node("Concat", [n_c, g.slice1(shape, 2, "old_h"), new_w], "sizes_w", axis=0)
    sizes_h = g.node("Concat", [n_c, new_h, new_w], "sizes_h", axis=0)
    half, lo, hi = g.const("half", 0.5, np.float32), g.const("zero", 0.0, np.float32), g.const("max", 255.0, np.float32)
    for name, sizes in (("resize_w", sizes_w), ("resize_h", sizes_h)):
        x = g.node("Resize", [x, "", "", sizes], name, **attrs)
        # PIL stores each pass as uint8, rounding half up: floor(x + 0.5), clipped to 0..255.
        x = g.node("Clip", [g.node("Floor", [g.node("Add", [x, half], f"{name}_add")], f"{name}_floor"), lo, hi],
                   f"{name}_u8")
    return x


def _nearest(g: _Graph, x: str, shape: str, new_hw: str) -> str:
    """PIL's nearest resize, index for index: source row/column floor(p), where p starts at scale / 2 and
    grows by scale = in / out, added up one step at a time in double precision as PIL does (a product
    (i + 0.5) * scale, or onnxruntime's Resize, rounds exact ties of integer-ratio upscaling otherwise)."""
    from onnx import TensorProto

    def source_index(axis: int) -> str:
        name = "hw"[axis - 2]
        size_in = g.node("Cast", [g.slice1(shape, axis, f"in_{name}")], f"in_{name}_f", to=TensorProto.DOUBLE)
        size_out = g.slice1(new_hw, axis - 2, f"out_{name}")
        scale = g.node("Div", [size_in, g.node("Cast", [size_out], f"out_{name}_f", to=TensorProto.DOUBLE)],
                       f"scale_{name}")
        steps = g.node("Expand", [scale, g.node("Sub", [size_out, g.const(f"one_{name}", [1], np.int64)],
                                                f"rest_{name}")], f"steps_{name}")
        first = g.node("Mul", [scale, g.const(f"half_{name}", [0.5], np.float64)], f"first_{name}")
        position = g.node("CumSum", [g.node("Concat", [first, steps], f"seq_{name}", axis=0),
                                     g.const(f"axis0_{name}", 0, np.int64)], f"pos_{name}")
        index = g.node("Cast", [g.node("Floor", [position], f"floor_{name}")], f"index_{name}", to=TensorProto.INT64)
        last = g.node("Sub", [g.slice1(shape, axis, f"in2_{name}"), g.const(f"one2_{name}", [1], np.int64)],
                      f"last_{name}")
        return g.node("Min", [index, last], f"clamped_{name}")

    x = g.node("Gather", [x, source_index(2)], "rows", axis=2)
    return g.node("Gather", [x, source_index(3)], "columns", axis=3)


def prepend_preprocessing(model: "onnx.ModelProto", spec: "PreprocessSpec", layout: str,
                          input_name: str = "images") -> "onnx.ModelProto":
    """`model` (float "images" input) with the preprocessing graph in front: it then takes uint8 images.

    Args:
        model: an exported model whose input `input_name` takes normalized float32 NCHW images.
        spec: the preprocessing of its weights.
        layout: "nhwc" or "nchw" for the uint8 input.
        input_name: the name of `model`'s input (the new uint8 input gets the same name).

    Returns:
        The joined model.
    """
    import onnx.compose

    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    pre = preprocess_model(spec, layout, opset, model.ir_version, input_name="preprocess/input")
    joined = onnx.compose.merge_models(pre, model, io_map=[(OUTPUT, input_name)])
    # The joined input is called "preprocess/input"; give it the model's input name back.
    for n in joined.graph.node:
        n.input[:] = [input_name if i == "preprocess/input" else i for i in n.input]
    joined.graph.input[0].name = input_name
    return joined
