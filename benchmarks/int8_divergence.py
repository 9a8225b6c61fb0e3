"""Where a `te finetune --qat` run's int8 file and the simulation it trained part: layer by layer.

    python benchmarks/int8_divergence.py --run QAT_RUN --onnx FILE.onnx [--images 8]

FILE.onnx is what `te export QAT_RUN --onnx --quantize int8` wrote. At every activation onnxruntime quantizes
(the points of the run's qat.json, in graph order), the script compares three sets of uint8 values on the same
digits (builtin:digits, the first N):
  kernels     onnxruntime with its default optimizations: the fused integer kernels (QLinearConv, QLinearAdd,
              QGemm) the file runs in production;
  reference   onnxruntime with graph optimizations off: the same QDQ graph executed in float, node by node
              (what the ONNX specification says the file computes);
  simulation  the run's PyTorch model under its int8 simulation (`onnx.simulate.QuantSim`).
It prints, per point, the share of values where the kernels differ from the simulation and from the reference,
and the largest difference in quantization steps. The question it answers: could a better simulation make
the file and the trained model agree on every image (so that te export's gate would need no more than the
268 images of a perfect score), or is the difference in the arithmetic itself?
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import numpy as np


def simulated_points(model, spec, images: np.ndarray) -> dict[str, np.ndarray]:
    """{ONNX tensor: the simulation's uint8 values there} on `images`."""
    import torch

    from transfer_engine.onnx.simulate import INPUT_POINT, QuantSim

    points = {(p.module, p.call): p for p in spec.points}
    values: dict[str, np.ndarray] = {}
    counts: collections.Counter = collections.Counter()
    modules = dict(model.named_modules())

    def record(path):
        def hook(module, args, output):
            point = points.get((path, counts[path]))
            counts[path] += 1
            if point is not None:
                values[point.tensor] = (torch.round(output.detach() / point.scale) + point.zero_point).numpy()
        return hook

    with QuantSim(model, spec), torch.no_grad():
        handles = [modules[spec.entry].register_forward_pre_hook(lambda m, a: counts.clear())]
        handles += [modules[path].register_forward_hook(record(path))
                    for path in {p.module for p in spec.points if p.module != INPUT_POINT}]
        try:
            model(torch.from_numpy(images))
        finally:
            for h in handles:
                h.remove()
    return values


def onnx_points(model_path: Path, tensors: list[str], images: np.ndarray, optimized: bool, work: Path
                ) -> dict[str, np.ndarray]:
    """{ONNX tensor: onnxruntime's uint8 values of its QuantizeLinear} on `images`, with the default graph
    optimizations (the integer kernels) or none (the QDQ graph in float)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = onnx.load(str(model_path))
    quantized = {n.input[0]: n.output[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"}
    wanted = {t: quantized[t] for t in tensors if t in quantized}
    for name in wanted.values():
        graph.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.UINT8, None))
    probe = work / f"probe-{'kernels' if optimized else 'reference'}.onnx"
    onnx.save(graph, str(probe))
    options = ort.SessionOptions()
    if not optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(probe), options, providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"images": images})))
    return {t: outputs[q].astype(np.int64) for t, q in wanted.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a te finetune --qat run directory")
    parser.add_argument("--onnx", required=True, help="the int8 file te export wrote from it")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args(argv)

    from transfer_engine.data.sources import open_source
    from transfer_engine.onnx.simulate import SimSpec
    from transfer_engine.runs import Run

    run = Run.open(args.run)
    if not run.qat:
        raise SystemExit(f"{args.run} is not a te finetune --qat run")
    model = run.build_model().eval()
    spec = SimSpec.from_dict(run.qat["simulation"])
    source = open_source("builtin:digits")
    transform = run.preprocess.transform()
    samples = list(source.samples())[:args.images]
    images = np.stack([transform(source.decode(s, source.read_bytes(s))).numpy() for s in samples]).astype(np.float32)
    tensors = [p.tensor for p in spec.points]
    simulated = simulated_points(model, spec, images)
    with tempfile.TemporaryDirectory(prefix="te-int8-divergence-") as work:
        kernels = onnx_points(Path(args.onnx), tensors, images, True, Path(work))
        reference = onnx_points(Path(args.onnx), tensors, images, False, Path(work))
    print(f"{args.images} digits; share of uint8 values where the kernels differ (largest difference in steps)")
    print(f"{'point (ONNX tensor)':34s} {'module':34s} {'values':>9s}  {'vs simulation':>18s}  {'vs reference':>18s}")
    for p in spec.points:
        if p.tensor not in kernels or p.tensor not in simulated:
            continue
        k = kernels[p.tensor]
        s = simulated[p.tensor].reshape(k.shape) if simulated[p.tensor].size == k.size else None
        r = reference[p.tensor]
        cells = []
        for other in (s, r):
            if other is None:
                cells.append(f"{'-':>18s}")
                continue
            d = np.abs(k - other)
            cells.append(f"{(d > 0).mean():>10.2e} ({int(d.max()):>3d})")
        print(f"{p.tensor[:34]:34s} {p.module[:34]:34s} {k.size:>9d}  {cells[0]}  {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
