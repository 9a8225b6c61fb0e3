"""te export's ONNX models against the PyTorch model they came from, on one run per backbone, in one process.

    python benchmarks/bench_export.py                        # ResNet-50 and EfficientNet-Lite0, full sizes
    python benchmarks/bench_export.py --quick --json results.json

For each backbone, one run made by te's own pipeline: `extract()` of real digits into a feature cache, a
linear head fitted with L-BFGS on the cached train features (tests/export/helpers.py, te train's
stand-in), written as a run directory; then `export_onnx(run, quantize="int8")`, which proves fp32
parity and measures the int8 model's top-1 agreement with PyTorch on the held-out digits. The same
model is then timed four ways on real digit images:
  torch eager fp32          run.build_model(), inference_mode, NCHW float32: the baseline
  torch channels_last bf16  te extract's fast setup: channels_last and autocast bf16 (informational)
  ORT fp32                  FILE.fp32.onnx on onnxruntime's CPU provider
  ORT int8                  FILE.onnx (static int8, QDQ, per-channel), fully int8: te export's accuracy gate
                            is turned off here (it would keep groups in float below 99% agreement), so the
                            int8 rows say "full int8" and the agreement row shows what the gate would judge
Latency: median over --repeat calls at batch 1. Throughput: images/s over --repeat calls at batch 32.
Targets: ORT fp32 >= 1.5x torch eager fp32 at batch 1; ORT int8 >= 1.5x ORT fp32 (batch 1
and batch 32) with top-1 agreement >= 99%. ResNet-50 runs with seeded random weights (no download here):
its timings are those of the real network; its agreement is that of a probe on random features.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from _results import add_suite_options, pick_sizes, print_rows, result_row, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "export"))
from helpers import fit_linear_head, write_run  # noqa: E402  (the te train stand-in the tests use)

BACKBONES = {"resnet50": "none", "efficientnet_lite0": "imagenet"}
# The weights of every backbone this script can run (mobilenet_v3_small: the smoke size's small model).
WEIGHTS = {**BACKBONES, "mobilenet_v3_small": "none"}
SIZES = {"full": {"images": 600, "check": 200, "calibration": 128, "repeat": 30, "batch": 32},
         "quick": {"images": 120, "check": 32, "calibration": 16, "repeat": 8, "batch": 32},
         "smoke": {"images": 40, "check": 8, "calibration": 8, "repeat": 2, "batch": 4,
                   "backbones": "mobilenet_v3_small"}}


def make_run(folder: Path, backbone: str, weights: str, images: int) -> Path:
    """Extract `images` digits, fit a linear head on the cached train features, write the run."""
    from transfer_engine.backbones import create_backbone
    from transfer_engine.cache import FeatureCache
    from transfer_engine.extract import extract

    summary = extract(backbone, "builtin:digits", folder / "cache", weights=weights, name="digits", limit=images,
                      progress=False)
    with FeatureCache.open(folder / "cache", create=False) as cache:
        dataset = cache.dataset("digits")
        features = cache.open_space(summary.space).gather(dataset.keys("train"))
        labels = np.array(dataset.labels("train"))
    head = fit_linear_head(np.asarray(features, dtype=np.float32), labels)
    return write_run(folder / "run", create_backbone(backbone, weights=weights), head, folder / "cache")


def digit_batch(run_dir: Path, count: int) -> np.ndarray:
    """`count` real digits through the run's transform (cycled when fewer)."""
    from transfer_engine.data.sources import open_source
    from transfer_engine.runs import Run

    transform = Run.open(run_dir).preprocess.transform()
    source = open_source("builtin:digits")
    samples = list(source.samples())[-count:]
    return np.stack([transform(source.decode(s, source.read_bytes(s))).numpy() for s in samples])


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    call()  # warm-up: first-call allocations, oneDNN/ORT kernel selection
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def measure(run_dir: Path, fp32_onnx: Path, int8_onnx: Path, repeat: int, batch: int) -> dict[str, tuple[float, float]]:
    """{way: (batch-1 latency ms, batch-`batch` images/s)} for the four ways."""
    from transfer_engine.onnx.runtime import open_session
    from transfer_engine.runs import Run

    images = digit_batch(run_dir, batch)
    one, many = torch.from_numpy(images[:1]), torch.from_numpy(images)
    model = Run.open(run_dir).build_model()
    ways: dict[str, Callable[[torch.Tensor], object]] = {}

    def eager(x):
        with torch.inference_mode():
            return model(x)

    fast = Run.open(run_dir).build_model().to(memory_format=torch.channels_last)

    def channels_last_bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return fast(x.contiguous(memory_format=torch.channels_last))

    ways["torch eager fp32"], ways["torch channels_last bf16"] = eager, channels_last_bf16
    for name, path in (("ORT fp32", fp32_onnx), ("ORT int8", int8_onnx)):
        session = open_session(str(path), "CPUExecutionProvider")
        ways[name] = lambda x, s=session: s.run({"images": x.numpy()}, ["logits"])
    result = {}
    for name, call in ways.items():
        latency = statistics.median(timed(lambda: call(one), repeat)) * 1000
        throughput = batch / statistics.median(timed(lambda: call(many), max(2, repeat // 4)))
        result[name] = (latency, throughput)
        print(f"  {name:26} batch 1: {latency:8.2f} ms   batch {batch}: {throughput:8.1f} img/s", file=sys.stderr)
    return result


def rows_for(backbone: str, t: dict[str, tuple[float, float]], agreement: float, batch: int) -> list[dict]:
    eager, bf16, fp32, int8 = (t[k] for k in ("torch eager fp32", "torch channels_last bf16", "ORT fp32", "ORT int8"))
    note_agree = f"int8 top-1 agreement with PyTorch {agreement:.1%} on the held-out digits"
    return [
        result_row(f"{backbone}: ORT fp32 vs torch eager fp32, batch 1 (ms)", fp32[0], eager[0], "ms",
                   eager[0] / fp32[0], ">= 1.5x", "the same fp32 model, inference_mode, NCHW",
                   **({"headline": True} if backbone == "efficientnet_lite0" else {})),
        result_row(f"{backbone}: ORT fp32 vs torch eager fp32, batch {batch} (img/s)", fp32[1], eager[1], "img/s",
                   fp32[1] / eager[1], None),
        result_row(f"{backbone}: ORT full int8 (no accuracy gate) vs ORT fp32, batch 1 (ms)", int8[0], fp32[0], "ms",
                   fp32[0] / int8[0], ">= 1.5x", note_agree),
        result_row(f"{backbone}: ORT full int8 (no accuracy gate) vs ORT fp32, batch {batch} (img/s)", int8[1],
                   fp32[1], "img/s", int8[1] / fp32[1], ">= 1.5x", note_agree),
        result_row(f"{backbone}: full int8 top-1 agreement with PyTorch (%)", agreement * 100, 100.0, "%", agreement,
                   ">= 99%", "te export's default gate refuses full int8 below 99% and keeps groups in float"),
        result_row(f"{backbone}: torch channels_last bf16 vs eager fp32, batch 1 (ms)", bf16[0], eager[0], "ms",
                   eager[0] / bf16[0], None, "te extract's setup; informational"),
        result_row(f"{backbone}: torch channels_last bf16 vs eager fp32, batch {batch} (img/s)", bf16[1], eager[1],
                   "img/s", bf16[1] / eager[1], None, "informational"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_suite_options(parser, "small sizes: 120 digits, 32 checked, 16 calibrated")
    parser.add_argument("--backbones", default=None, help="comma-separated, of: " + ", ".join(WEIGHTS) +
                        " (default " + ",".join(BACKBONES) + ")")
    args = parser.parse_args()
    suite = pick_sizes(args, full={"backbones": ",".join(BACKBONES)}, quick={"backbones": ",".join(BACKBONES)},
                       smoke={"backbones": SIZES["smoke"]["backbones"]})
    images, check, calibration, repeat, batch = (SIZES[suite][k] for k in ("images", "check", "calibration",
                                                                           "repeat", "batch"))
    from transfer_engine.export import export_onnx

    rows, config = [], {"suite": suite, "quick": args.quick, "images": images, "check": check, "calibration": calibration, "repeat": repeat,
                        "batch": batch, "threads": torch.get_num_threads(), "backbones": {}}
    with tempfile.TemporaryDirectory(prefix="te-bench-export-") as tmp:
        for backbone in args.backbones.split(","):
            weights = WEIGHTS[backbone]
            folder = Path(tmp) / backbone
            print(f"{backbone} ({weights} weights): run on {images} digits, export, int8", file=sys.stderr)
            started = time.perf_counter()
            run = make_run(folder, backbone, weights, images)
            result = export_onnx(run, folder / "out" / "model.onnx", quantize="int8", check_size=check,
                                 calibration_size=calibration, min_agreement=1e-9,
                                 min_int8_speedup=0)  # full int8: report, never refuse here
            report = result.report
            agreement = report["variants"]["int8"]["top1_agreement"]
            config["backbones"][backbone] = {
                "weights": weights, "setup_seconds": time.perf_counter() - started, "exporter": report["export"]["exporter"],
                "fp32_max_abs_diff": report["variants"]["fp32"]["max_abs_diff"], "int8_agreement": agreement,
                "int8_accuracy_delta": report["variants"]["int8"]["accuracy_delta"], "check_images": report["check"]["images"]}
            timings = measure(run, Path(result.files["fp32"]), Path(result.files["model"]), repeat, batch)
            rows += rows_for(backbone, timings, agreement, batch)
    print_rows(rows)
    if args.json:
        write_results(args.json, "export", rows, config)


if __name__ == "__main__":
    main()
