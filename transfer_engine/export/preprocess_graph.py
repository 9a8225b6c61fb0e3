"""Preprocessing as ONNX: uint8 RGB images -> the normalized tensor the model takes, inside the graph.

It reproduces `PreprocessSpec.transform()` (torchvision on a PIL image) step by step:

    resize     shorter side -> resize_size, the longer int(resize_size * long / short), as torchvision;
               PIL resamples width first, then height, rounding to uint8 in between and at the end:
               two Resize nodes, each followed by floor(x + 0.5) and a clip to 0..255.
               PIL's filters: bilinear = linear with antialias; bicubic = cubic with a = -0.5 and
               antialias; both on half-pixel centres with out-of-image taps dropped (exclude_outside);
               nearest = half-pixel centres rounded half up.
    crop       top = round((h - crop) / 2) with ties to even, as Python's round() (ONNX Round does that)
    normalize  x * (1/255), minus mean, divided by std, in that order (torchvision's float operations)

Measured on skimage's photos, odd-sized crops of them and the digits: bilinear and bicubic give the same
uint8 pixels as PIL except at most 1 level on under 0.3% of them (PIL's fixed-point weights); nearest
can pick the neighbouring source pixel where a sample lands exactly between two (float rounding). The
parity report measures this on the check images, and `te export` fails when it is worse.

All images of one batch must have the same height and width (a tensor); any size works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    import onnx

    from transfer_engine.backbones.spec import PreprocessSpec

MIN_OPSET = 18  # Resize's antialias attribute
OUTPUT = "pixels"


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
    from onnx import TensorProto, helper, numpy_helper

    if opset < MIN_OPSET:
        raise UsageError(f"--preprocess needs --opset {MIN_OPSET} or later (antialiased Resize), got {opset}")
    if layout not in ("nhwc", "nchw"):
        raise UsageError(f"--layout {layout!r}: expected nhwc or nchw")
    nodes: list = []
    inits: list = []

    def const(name: str, value, dtype) -> str:
        full = f"preprocess/{name}"
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), full))
        return full

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        out = f"preprocess/{name}"
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    half, lo, hi = const("half", 0.5, np.float32), const("zero", 0.0, np.float32), const("max", 255.0, np.float32)

    def round_to_uint8_levels(x: str, name: str) -> str:
        # PIL stores each pass as uint8, rounding half up: floor(x + 0.5), clipped to 0..255.
        return node("Clip", [node("Floor", [node("Add", [x, half], f"{name}_add")], f"{name}_floor"), lo, hi],
                    f"{name}_u8")

    x = node("Cast", [input_name], "float", to=TensorProto.FLOAT)
    if layout == "nhwc":
        x = node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
    shape = node("Shape", [x], "shape")
    hw = node("Slice", [shape, const("from2", [2], np.int64), const("to4", [4], np.int64)], "hw")
    short = node("ReduceMin", [hw], "short", keepdims=1)
    # int(R * long / short) and R for the short side, in exact integer arithmetic (Div of int64 floors)
    new_hw = node("Div", [node("Mul", [hw, const("resize", [spec.resize_size], np.int64)], "r_hw"), short], "new_hw")
    new_h = node("Slice", [new_hw, const("i0", [0], np.int64), const("i1", [1], np.int64)], "new_h")
    new_w = node("Slice", [new_hw, const("j1", [1], np.int64), const("j2", [2], np.int64)], "new_w")
    if spec.interpolation == "nearest":
        attrs = dict(mode="nearest", coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
    else:
        attrs = dict(mode="linear" if spec.interpolation == "bilinear" else "cubic", antialias=1,
                     coordinate_transformation_mode="half_pixel", exclude_outside=1, cubic_coeff_a=-0.5)
    # Full 4-D sizes rather than the `axes` attribute: onnxruntime's NHWC layout optimization (used with
    # int8 models on the CPU) moves Transposes across Resize and mishandles `axes` (1.32: a load error).
    n_c = node("Slice", [shape, const("k0", [0], np.int64), const("k2", [2], np.int64)], "n_c")
    old_h = node("Slice", [shape, const("h2", [2], np.int64), const("h3", [3], np.int64)], "old_h")
    sizes_w = node("Concat", [n_c, old_h, new_w], "sizes_w", axis=0)
    sizes_h = node("Concat", [n_c, new_h, new_w], "sizes_h", axis=0)
    x = node("Resize", [x, "", "", sizes_w], "resize_w", **attrs)
    x = round_to_uint8_levels(x, "resize_w")
    x = node("Resize", [x, "", "", sizes_h], "resize_h", **attrs)
    x = round_to_uint8_levels(x, "resize_h")
    crop = spec.crop_size
    excess = node("Cast", [node("Sub", [new_hw, const("crop_size", [crop], np.int64)], "excess")], "excess_f",
                  to=TensorProto.FLOAT)
    start = node("Cast", [node("Round", [node("Div", [excess, const("two", 2.0, np.float32)], "half_excess")],
                               "top_left")], "start", to=TensorProto.INT64)
    end = node("Add", [start, const("crop_hw", [crop, crop], np.int64)], "end")
    x = node("Slice", [x, start, end, const("axes", [2, 3], np.int64)], "crop")
    x = node("Mul", [x, const("inv255", 1.0 / 255.0, np.float32)], "scale")
    x = node("Sub", [x, const("mean", np.array(spec.mean).reshape(1, 3, 1, 1), np.float32)], "centre")
    nodes.append(helper.make_node("Div", [x, const("std", np.array(spec.std).reshape(1, 3, 1, 1), np.float32)],
                                  [OUTPUT], name="preprocess/normalize"))
    shape = ["batch", "height", "width", 3] if layout == "nhwc" else ["batch", 3, "height", "width"]
    graph = helper.make_graph(nodes, "te_preprocess", [helper.make_tensor_value_info(input_name, TensorProto.UINT8,
                                                                                     shape)],
                              [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", 3, crop, crop])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="transfer_engine")
    if ir_version is not None:
        model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


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
