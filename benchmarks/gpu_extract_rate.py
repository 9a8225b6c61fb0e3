"""img/s of te extract's device path on real JPEGs, stage by stage, against the PIL path on the same machine.

    python benchmarks/gpu_extract_rate.py                      # cuda, ResNet-50 and EfficientNet-Lite0
    python benchmarks/gpu_extract_rate.py --device cpu --images 16 --batch 8 --backbones mobilenet_v3_small

Not a `te bench` suite (its name has no bench_ prefix, so neither `te bench` nor CI runs it): it needs a
GPU, and benchmarks/gpu_check.sh runs it when one is lent. It prints, per backbone and engine:
  decode      decode_batch (nvjpeg on CUDA) of a batch of JPEGs
  preprocess  preprocess_batch (resize, crop, normalize on the device)
  compute     the engine on the preprocessed batch
  quantize    ops.encode_rows(features, "int8") and the copy of the int8 rows to the host
  device path all four in sequence, img/s over every batch
  pil path    FeatureExtractor as te extract runs it today (PIL decode + transform in threads) + the same engine
and, once, how far nvjpeg's pixels are from PIL's (mean and max |difference| in levels per image).
The photos are skimage.data's, resized to camera-like sizes and saved as JPEG quality 90: no download.
Backbones are randomly initialized (no weights download): that changes no timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import tempfile
import time
from pathlib import Path

import torch

SIZES = ((1600, 1200), (1024, 768), (640, 480))


def jpegs(n: int) -> list[bytes]:
    """n JPEGs of skimage photos at the SIZES above (cycled)."""
    from PIL import Image
    from skimage import data

    photos = [getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")]
    out = []
    for i in range(n):
        image = Image.fromarray(photos[i % len(photos)]).resize(SIZES[i % len(SIZES)])
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """fn()'s result and its wall time, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return result, time.perf_counter() - start


def pixel_differences(datas: list[bytes], device: torch.device) -> None:
    """How far the device decoder's pixels are from PIL's (0 on the CPU: both are libjpeg-turbo)."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    from transfer_engine.data.decode import decode_image
    from transfer_engine.extract.device_decode import decode_batch

    for data, pixels in zip(datas, decode_batch(datas, device)):
        diff = (pixels.cpu().int() - pil_to_tensor(decode_image(data)).int()).abs()
        print(f"  {tuple(pixels.shape)}: mean {diff.float().mean():.3f} levels, max {diff.max()} levels")


def engines(name: str, device: torch.device, tmp: Path):
    """The backbone, its preprocessing (torch resampler where the spec has one) and each available engine."""
    from transfer_engine.backbones import create_backbone
    from transfer_engine.extract.engines import OrtEngine, TorchEngine
    from transfer_engine.onnx.export import export_backbone
    from transfer_engine.onnx.runtime import ort_available

    bb = create_backbone(name, weights="none")
    spec = bb.preprocess
    if "resampler" in {f.name for f in dataclasses.fields(spec)}:
        spec = dataclasses.replace(spec, resampler="torch")
    found = {"torch fp32": TorchEngine(bb, device, "fp32")}
    if device.type == "cuda":
        found["torch fp16"] = TorchEngine(bb, device, "fp16")
    if ort_available(device):
        export_backbone(bb.model, tmp / f"{name}.onnx", crop_size=spec.crop_size)
        found["onnxruntime fp32"] = OrtEngine(tmp / f"{name}.onnx", device)
    else:
        print(f"  (no onnxruntime provider for {device.type}: onnxruntime-gpu is te's gpu extra)")
    return bb, spec, found


def device_path(datas: list[bytes], batch: int, spec, engine, device: torch.device) -> dict[str, float]:
    """Seconds per stage over all batches, and the whole path's img/s."""
    from transfer_engine import ops
    from transfer_engine.extract.device_decode import decode_batch, preprocess_batch

    seconds = {"decode": 0.0, "preprocess": 0.0, "compute": 0.0, "quantize": 0.0}
    for i in range(0, len(datas), batch):
        images, t = timed(lambda: decode_batch(datas[i:i + batch], device), device)
        seconds["decode"] += t
        x, t = timed(lambda: preprocess_batch(images, spec), device)
        seconds["preprocess"] += t
        features, t = timed(lambda: engine(x), device)
        seconds["compute"] += t
        _, t = timed(lambda: ops.encode_rows(features, "int8").cpu(), device)
        seconds["quantize"] += t
    rates = {stage: len(datas) / s for stage, s in seconds.items()}
    rates["device path"] = len(datas) / sum(seconds.values())
    return rates


def pil_path(datas: list[bytes], batch: int, bb, engine, device: torch.device) -> float:
    """img/s of te extract's PIL path (decode and transform threads) with the same engine."""
    from transfer_engine.data.decode import decode_image
    from transfer_engine.extract.pipeline import FeatureExtractor, Item

    extractor = FeatureExtractor(bb, device, batch_size=batch, workers=os.cpu_count() or 1, engine=engine)
    items = [Item(str(i), str(i), lambda d=d: decode_image(d)) for i, d in enumerate(datas)]
    _, t = timed(lambda: [b.features.cpu() for b in extractor.run(items)], device)
    return len(datas) / t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--backbones", default="resnet50,efficientnet_lite0")
    args = parser.parse_args()
    device = torch.device(args.device)
    datas = jpegs(args.images)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.images} JPEGs ({', '.join(f'{w}x{h}' for w, h in SIZES)}), batch {args.batch}, on {name}")
    print("decoded pixels against PIL's:")
    pixel_differences(datas[:len(SIZES)], device)
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in args.backbones.split(","):
            print(f"{backbone}:")
            bb, spec, found = engines(backbone, device, Path(tmp))
            for label, engine in found.items():
                device_path(datas[:args.batch], args.batch, spec, engine, device)  # warm-up: cuDNN, nvjpeg
                rates = device_path(datas, args.batch, spec, engine, device)
                rates["pil path"] = pil_path(datas, args.batch, bb, engine, device)
                print(f"  {label:17s} " + "  ".join(f"{k} {v:,.0f} img/s" for k, v in rates.items()))


if __name__ == "__main__":
    main()
