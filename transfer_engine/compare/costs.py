"""What serving a backbone costs on this machine, as `te compare` reports it.

Every runtime is timed the same way, after a warm-up: latency at batch 1 (median of 5 calls) and
throughput at batch 32 (best of 2 calls), on the CPU (or the GPU te extract used). Runtimes:
- PyTorch fp32, channels_last (what te extract's torch backend runs);
- onnxruntime fp32, the backbone's ONNX graph (the same file te extract's onnxruntime backend runs,
  kept as a cache artifact, so it is exported once per backbone and weights); its size is the model
  file a user would ship;
- with `int8=True`, that graph quantized with te export's portable recipe (every node in int8,
  calibrated on train images of the data set), and how far its features are from fp32 on held-out
  images (cosine per image: te export's accuracy-budgeted search is what makes a deployable int8 model;
  this column says what int8 would buy and what it costs before anyone trains a head).
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from transfer_engine.errors import first_line

if TYPE_CHECKING:
    from transfer_engine.compare.results import Entry

LATENCY_CALLS = 5
THROUGHPUT_CALLS = 2
BATCH = 32
INT8_CALIBRATION_IMAGES = 128  # as te export's own minimum: ranges from fewer images mean little
INT8_CHECK_IMAGES = 64


@dataclass
class Timing:
    """One runtime's figures: ms per image at batch 1, images/s at batch 32."""

    latency_ms_batch1: float
    images_per_second_batch32: float


def time_runtime(run: Callable[[Any], Any], one: Any, batch: Any) -> Timing:
    """Time `run` on a batch of 1 (median of LATENCY_CALLS) and of BATCH (best of THROUGHPUT_CALLS),
    each after one warm-up call."""
    run(one)
    times = []
    for _ in range(LATENCY_CALLS):
        t = time.perf_counter()
        run(one)
        times.append(time.perf_counter() - t)
    run(batch)
    best = math.inf
    for _ in range(THROUGHPUT_CALLS):
        t = time.perf_counter()
        run(batch)
        best = min(best, time.perf_counter() - t)
    return Timing(1000 * statistics.median(times), BATCH / best)


@torch.no_grad()  # not inference_mode: .to() there would make the weights inference tensors, which
def torch_timing(model: torch.nn.Module, size: int) -> Timing:  # torch.onnx's tracer then cannot use
    """PyTorch fp32, channels_last, on the CPU (the model is converted in place)."""
    model = model.eval().to(memory_format=torch.channels_last)
    one = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    batch = torch.randn(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
    return time_runtime(model, one, batch)


def ort_timing(onnx_path: str | Path, size: int) -> Timing:
    """onnxruntime fp32 (or whatever the graph holds) on its CPU provider."""
    from transfer_engine.onnx.export import INPUT
    from transfer_engine.onnx.runtime import CPU, open_session

    session = open_session(str(onnx_path), CPU).session
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    batch = rng.standard_normal((BATCH, 3, size, size), dtype=np.float32)
    return time_runtime(lambda x: session.run(None, {INPUT: x}), one, batch)


def int8_costs(onnx_path: str | Path, calibration: np.ndarray, check: np.ndarray, size: int) -> dict[str, Any]:
    """The backbone's graph in full int8 (te export's portable recipe, calibrated on `calibration`):
    its timing, file size, and the cosine of its features to fp32's on the `check` images.

    Returns:
        {recipe, calibration_images, check_images, bytes, latency_ms_batch1, images_per_second_batch32,
        min_cosine, mean_cosine}.

    Raises:
        QuantizationError: onnxruntime's tools failed; RuntimeUnavailableError: no onnxruntime.
    """
    from transfer_engine.backbones.calibration import row_cosines
    from transfer_engine.onnx.export import FEATURES, INPUT
    from transfer_engine.onnx.int8 import quantize_fully
    from transfer_engine.onnx.recipes import DEFAULT_INT8_TARGET, RECIPES
    from transfer_engine.onnx.runtime import CPU, open_session, run_grouped

    recipe = RECIPES[DEFAULT_INT8_TARGET]
    with tempfile.TemporaryDirectory(prefix="te-compare-int8-") as tmp:
        work = Path(tmp)
        int8_model = work / "int8.onnx"
        quantize_fully(Path(onnx_path), int8_model, calibration, recipe=recipe, workdir=work, input_name=INPUT)
        sessions = [open_session(str(m), CPU) for m in (onnx_path, int8_model)]
        fp32, int8 = (run_grouped(s, list(check), BATCH, outputs=[FEATURES])[0] for s in sessions)
        cosine = row_cosines(torch.from_numpy(fp32), torch.from_numpy(int8)).numpy()
        timing = ort_timing(int8_model, size)
        return {"recipe": recipe.name, "calibration_images": len(calibration), "check_images": len(check),
                "bytes": int8_model.stat().st_size, "latency_ms_batch1": timing.latency_ms_batch1,
                "images_per_second_batch32": timing.images_per_second_batch32,
                "min_cosine": float(cosine.min()), "mean_cosine": float(cosine.mean())}


def split_images(backbone, data: str, records_by_split: dict[str, list], splits: tuple[str, ...],
                 limit: int) -> tuple[np.ndarray, str]:
    """Up to `limit` images of the first of `splits` that has records, spread evenly over it, decoded and
    preprocessed as te extract does (`backbones.calibration.calibration_batch`).

    Returns:
        (float32 [N, 3, S, S], the split's name; "" with no images when none of `splits` has records).
    """
    from transfer_engine.backbones.calibration import calibration_batch
    from transfer_engine.data.sources import Sample, open_source

    split, records = next(((s, records_by_split[s]) for s in splits if records_by_split.get(s)), ("", []))
    if len(records) > limit:
        step = len(records) / limit
        records = [records[int(i * step)] for i in range(limit)]
    batch = calibration_batch(backbone, open_source(data), (Sample(r.path, r.label, r.split) for r in records),
                              limit)
    size = backbone.preprocess.crop_size
    return (np.zeros((0, 3, size, size), np.float32) if batch is None else batch.numpy().astype(np.float32)), split


def measure(entry: "Entry", backbone: str, weights: str, seed: int, data: str, cache, dataset: str,
            int8: bool) -> None:
    """Fill `entry`'s cost columns: parameters, and what serving the backbone costs here: PyTorch fp32,
    onnxruntime fp32 and the ONNX file's size, int8 when asked. A runtime that cannot run it leaves its
    columns empty and says why in `costs_note`; the PyTorch figures are always measured."""
    from transfer_engine.backbones import create_backbone
    from transfer_engine.cache import FeatureCache
    from transfer_engine.onnx.backbone import exported_backbone
    from transfer_engine.onnx.runtime import ort_available

    bb = create_backbone(backbone, weights, seed=seed)
    size = bb.preprocess.crop_size
    entry.parameters = sum(p.numel() for p in bb.model.parameters())
    onnx, timing = None, None
    if not ort_available(torch.device("cpu")):
        entry.costs_note = "onnxruntime is not installed: no onnxruntime or int8 figures"
    else:
        try:  # before PyTorch's timing, which converts the model to channels_last
            with FeatureCache.open(cache, create=False) as fc:
                onnx = exported_backbone(bb, fc)
                if int8:  # the images it is calibrated and checked on
                    ds = fc.dataset(dataset)
                    by_split = {split: ds.select(split) for split in ("train", "val", "test")}
            timing = ort_timing(onnx, size)
        except Exception as exc:  # cannot export or run: the row keeps its PyTorch figures
            entry.costs_note = f"onnxruntime: {first_line(exc, 200)}"
    pt = torch_timing(bb.model, size)
    entry.latency_ms_batch1, entry.images_per_second_batch32 = pt.latency_ms_batch1, pt.images_per_second_batch32
    if onnx is None or timing is None:
        return
    entry.onnx_bytes = onnx.stat().st_size
    entry.ort_latency_ms_batch1, entry.ort_images_per_second_batch32 = (timing.latency_ms_batch1,
                                                                        timing.images_per_second_batch32)
    if not int8:
        return
    try:
        calibration, _ = split_images(bb, data, by_split, ("train",), INT8_CALIBRATION_IMAGES)
        check, split = split_images(bb, data, by_split, ("val", "test", "train"), INT8_CHECK_IMAGES)
        entry.int8 = int8_costs(onnx, calibration, check, size) | {"check_split": split}
    except Exception as exc:
        entry.costs_note = f"int8: {first_line(exc, 200)}"
