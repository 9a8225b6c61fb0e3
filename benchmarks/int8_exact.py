"""Does onnxruntime's int8 CPU arithmetic follow exact integer rules? Execute te's int8 file both ways.

    python benchmarks/int8_exact.py MODEL.onnx [--images N] [--data builtin:digits]

onnxruntime rewrites a QDQ file into its own integer operators (QLinearConv, QLinearAdd, QGemm, ...) before
it runs it. This script takes that rewritten graph (onnxruntime writes it out when asked) and executes it a
second time in NumPy, with exact integer accumulation and the requantization each kernel is documented to do:

    QuantizeLinear   q = saturate(round_half_even(x / scale) + zero_point)           (float32 division)
    QLinearConv      acc = sum((x - zx) * w) + bias (int32, exact), then
    QGemm            q = saturate(round_half_even(float32(acc) * M) + zy), M = float32(float32(sx * sw) / sy)
    QLinearAdd       q = saturate(round_half_even((a - za) * float32(sa / sc) + (b - zb) * float32(sb / sc) + zc))
    ReduceMean       in float64 (see "ties" below); DequantizeLinear, Transpose, Reshape as specified

and compares every quantized tensor, value for value, with what onnxruntime's kernels computed. Nothing of
te's is used for the arithmetic: it reads the file and its te metadata (for the images' preprocessing).

Ties: a float ReduceMean followed by a QuantizeLinear can land exactly on a rounding midpoint (the mean of
2 x 2 values is a multiple of 1/4); there the kernels' float summation order decides, and this script counts
such values as `ambiguous` instead of guessing the order. A 7 x 7 mean (EfficientNet at 224 px) never lands
within float error of a midpoint.

Measured 2026-12-07 on a Zen 4 (VNNI), onnxruntime 1.32.0, te export's int8 files of `te finetune --qat`
runs of EfficientNet-Lite0 on the digits: docs/export.md, "Quantization-aware fine-tuning".
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

F32 = np.float32
MIDPOINT_SLACK = 1e-4  # |fraction - 0.5| below this (in steps) is a midpoint the float order decides


def _rint_saturate(t: np.ndarray, zero_point: int) -> np.ndarray:
    return np.clip(np.rint(t) + zero_point, 0, 255).astype(np.uint8)


def _requantize(acc: np.ndarray, multiplier: np.ndarray, zero_point: int) -> np.ndarray:
    return _rint_saturate(acc.astype(np.int32).astype(F32) * multiplier.astype(F32), zero_point)


class ExactExecutor:
    """onnxruntime's optimized int8 graph, executed with exact integer arithmetic."""

    def __init__(self, optimized: Path) -> None:
        import onnx
        from onnx import numpy_helper

        self.graph = onnx.load(str(optimized)).graph
        self.constants = {t.name: numpy_helper.to_array(t) for t in self.graph.initializer}
        self.midpoints: dict[str, np.ndarray] = {}  # tensor -> where its values sit on a rounding midpoint

    def run(self, images: np.ndarray, fed: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Every tensor of the graph on `images`. With `fed` (the kernels' quantized tensors), each operator reads
        the kernels' values of its inputs: its own arithmetic alone is compared, not what it inherited."""
        from onnx import helper

        values: dict[str, np.ndarray] = {self.graph.input[0].name: images}
        fed = fed or {}

        def value(name: str) -> np.ndarray:
            return fed.get(name, values.get(name, self.constants.get(name)))

        for node in self.graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            ins = [value(n) if n else None for n in node.input]
            op = getattr(self, f"op_{node.op_type}", None)
            if op is None:
                raise SystemExit(f"int8_exact.py: no exact rule for {node.op_type} ({node.name}): add one")
            values[node.output[0]] = op(node, attrs, *ins)
        return values

    # -- operators -----------------------------------------------------------------------------------
    def op_QuantizeLinear(self, node, attrs, x, scale, zero_point):
        t = x / F32(scale)
        producer = next((n for n in self.graph.node if node.input[0] in n.output), None)
        if producer is not None and producer.op_type == "ReduceMean":
            self.midpoints[node.output[0]] = np.abs(t - np.floor(t) - 0.5) < MIDPOINT_SLACK
        return _rint_saturate(t, int(zero_point))

    def op_DequantizeLinear(self, node, attrs, q, scale, zero_point):
        return (q.astype(np.int32) - int(zero_point)).astype(F32) * F32(scale)

    def op_Transpose(self, node, attrs, x):
        return np.ascontiguousarray(x.transpose(attrs["perm"]))

    def op_Reshape(self, node, attrs, x, shape):
        return x.reshape(shape)

    def op_ReduceMean(self, node, attrs, x, axes=None):
        axes = tuple(int(a) for a in (axes if axes is not None else attrs["axes"]))
        return x.astype(np.float64).mean(axis=axes, keepdims=bool(attrs.get("keepdims", 1)))

    def op_QLinearConv(self, node, attrs, x, sx, zx, w, sw, zw, sy, zy, bias=None):
        import torch

        xi = x.astype(np.int64) - int(zx)
        if attrs.get("channels_last"):
            xi = xi.transpose(0, 3, 1, 2)
        top, left, bottom, right = attrs["pads"]
        xi = np.pad(xi, ((0, 0), (0, 0), (top, bottom), (left, right)))
        # float64 holds every partial sum exactly (|acc| < 2^53): the convolution is exact integer arithmetic
        wi = w.astype(np.int64) - np.asarray(zw, np.int64).reshape(-1, 1, 1, 1)
        acc = torch.nn.functional.conv2d(torch.from_numpy(xi.astype(np.float64)),
                                         torch.from_numpy(wi.astype(np.float64)),
                                         stride=attrs["strides"], groups=attrs["group"]).numpy().astype(np.int64)
        if bias is not None:
            acc += bias.astype(np.int64).reshape(1, -1, 1, 1)
        multiplier = (F32(sx) * np.asarray(sw, F32)) / F32(sy)
        y = _requantize(acc, multiplier.reshape(1, -1, 1, 1) if multiplier.size > 1 else multiplier, int(zy))
        return np.ascontiguousarray(y.transpose(0, 2, 3, 1)) if attrs.get("channels_last") else y

    def op_QLinearAdd(self, node, attrs, a, sa, za, b, sb, zb, sc, zc):
        # every step in float32, the output zero point added before rounding (adding it after the rounding
        # differed on 4 of 42 million values at 224 px)
        t = ((a.astype(np.int32) - int(za)).astype(F32) * (F32(sa) / F32(sc))
             + (b.astype(np.int32) - int(zb)).astype(F32) * (F32(sb) / F32(sc))) + F32(zc)
        return _rint_saturate(t, 0)

    def op_QGemm(self, node, attrs, a, sa, za, b, sb, zb, bias=None, sy=None, zy=None):
        if sy is None:
            raise SystemExit("int8_exact.py: a QGemm with a float output has no exact rule here")
        bi = b.astype(np.int64)
        if attrs.get("transB"):
            bi = bi.T
        acc = (a.astype(np.int64) - int(za)) @ (bi - np.asarray(zb, np.int64).reshape(1, -1))
        if bias is not None:
            acc += bias.astype(np.int64)
        return _requantize(acc, (F32(sa) * np.asarray(sb, F32)) / F32(sy), int(zy))


def optimized_graph(model: Path, folder: Path) -> Path:
    """The graph onnxruntime's CPU provider runs for `model` (its default optimizations), written out."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    return folder / "optimized.onnx"


def kernels(optimized: Path, images: np.ndarray, folder: Path) -> dict[str, np.ndarray]:
    """Every quantized tensor of the optimized graph, as onnxruntime's kernels compute it."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.load(str(optimized))
    quantized = [n.output[0] for n in model.graph.node
                 if n.op_type in ("QuantizeLinear", "QLinearConv", "QLinearAdd", "QGemm")]
    model.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.UINT8, None) for t in quantized)
    path = folder / "probe.onnx"
    onnx.save(model, str(path))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # already optimized
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: images})))


def load_images(model: Path, data: str, count: int) -> np.ndarray:
    """`count` images of `data`, preprocessed as the model's te metadata says (float input models)."""
    from transfer_engine.data.sources import open_source
    from transfer_engine.onnx.metadata import read_metadata

    transform = read_metadata(model).preprocess_spec().transform()
    source = open_source(data)
    out = []
    for sample in source.samples():
        out.append(transform(source.decode(sample, source.read_bytes(sample))).numpy())
        if len(out) == count:
            break
    return np.stack(out).astype(F32)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--data", default="builtin:digits")
    args = parser.parse_args(argv)
    images = load_images(args.model, args.data, args.images)
    with tempfile.TemporaryDirectory(prefix="te-int8-exact-") as tmp:
        optimized = optimized_graph(args.model, Path(tmp))
        executor = ExactExecutor(optimized)
        theirs = kernels(optimized, images, Path(tmp))
        chained = executor.run(images)  # end to end: each operator on this script's own inputs
        ours = executor.run(images, fed=theirs)
    by_op: dict[str, list[int]] = {}
    for node in executor.graph.node:
        name = node.output[0]
        if name in theirs and theirs[name].dtype == np.uint8:
            differ = theirs[name] != ours[name]
            midpoint = executor.midpoints.get(name, np.zeros_like(differ))
            seen = by_op.setdefault(node.op_type, [0, 0, 0, 0, 0])
            for i, n in enumerate((1, differ.size, int((differ & ~midpoint).sum()), int(midpoint.sum()),
                                   int((differ & midpoint).sum()))):
                seen[i] += n
    print(f"{args.model}: {len(images)} images of {args.data}; each operator on the kernels' own inputs:")
    for op, (nodes, values, differ, midpoints, at_midpoints) in sorted(by_op.items()):
        print(f"  {op:15s} {nodes:3d} nodes, {values:>12,} values: {differ:,} differ from onnxruntime's kernels"
              + (f" (and {at_midpoints:,} of {midpoints:,} midpoints of a float mean, where the kernels' summation"
                 f" order decides)" if midpoints else ""))
    logits = [o.name for o in executor.graph.output if "logits" in o.name]
    if logits:
        ref, got = theirs.get(logits[0]), chained[logits[0]]
        if ref is None:
            import onnxruntime as ort

            session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
            ref = session.run([logits[0]], {session.get_inputs()[0].name: images})[0]
        print(f"  end to end, logits: max |difference| {float(np.abs(ref - got).max()):.3g}; top-1 the same on "
              f"{int((ref.argmax(1) == got.argmax(1)).sum())} of {len(images)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
