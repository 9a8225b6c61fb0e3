"""te extract against the loop a user writes, on a folder of real JPEGs, in one process.

    python benchmarks/bench_extract.py                 # ResNet-50 at 224, 320 images
    python benchmarks/bench_extract.py --images 640 --json

Measured in the same run:
  baseline   torchvision ImageFolder + DataLoader(num_workers=2) + eager fp32 model, batch 32,
             inference_mode (the weights' own transform); timed over the loop
  te         `extract()` end to end: hashing, cache lookup, decode/transform threads, the model in the
             precision `--precision auto` chose, quantization, durable appends, the data set record
  compute    the model alone on random input, in te's chosen precision and layout: the ceiling
  rerun      `extract()` again after adding 1% new files
Targets: te >= 2.5x baseline; te >= 85% of compute; rerun <= 5% of the full run's time.
The images are made from skimage.data photos and scikit-learn digits at 256x256: no download.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def real_images(n: int) -> list[tuple[str, Image.Image]]:
    """n labelled 256x256 RGB images: crops and flips of skimage's photos, and upscaled digits."""
    from skimage import data as skdata
    from sklearn.datasets import load_digits

    photos = [getattr(skdata, name)() for name in ("astronaut", "chelsea", "coffee", "rocket", "camera",
                                                    "cat", "immunohistochemistry", "colorwheel")]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    digits = load_digits().images
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        if i % 2 == 0:
            p = photos[(i // 2) % len(photos)]
            h, w = p.shape[:2]
            s = int(min(h, w) * rng.uniform(0.5, 1.0))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            crop = p[y:y + s, x:x + s]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            out.append(("photo", Image.fromarray(np.ascontiguousarray(crop)).resize((256, 256), Image.BICUBIC)))
        else:
            d = (255 - digits[(i // 2) % len(digits)] * 255 / 16).astype(np.uint8)
            out.append(("digit", Image.fromarray(d).convert("RGB").resize((256, 256), Image.BICUBIC)))
    return out


def write_folder(root: Path, images: list[tuple[str, Image.Image]], start: int = 0) -> None:
    for i, (cls, img) in enumerate(images, start=start):
        (root / cls).mkdir(parents=True, exist_ok=True)
        img.save(root / cls / f"{i:05d}.jpg", quality=90)


def baseline(folder: Path, backbone: str, batch: int) -> float:
    """Images/s of the plain loop: ImageFolder + DataLoader(num_workers=2) + eager fp32."""
    from torchvision import datasets

    from transfer_engine.backbones import create_backbone

    bb = create_backbone(backbone, weights="none")
    ds = datasets.ImageFolder(str(folder), transform=bb.transform())
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=2)
    model = bb.model.eval()
    n = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader:
            model(x)
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def compute_only(backbone: str, precision: str, batch: int, repeat: int = 3) -> float:
    """Images/s of the model alone, channels_last, in `precision` (te's extraction setup)."""
    from transfer_engine.backbones import create_backbone
    from transfer_engine.extract.pipeline import autocast_context, prepare_model

    bb = create_backbone(backbone, weights="none")
    model = prepare_model(bb, torch.device("cpu"))
    x = torch.randn(batch, *bb.preprocess.input_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_context(torch.device("cpu"), precision):
        model(x)
        start = time.perf_counter()
        for _ in range(repeat):
            model(x)
    return batch * repeat / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="te's --precision (auto, fp32, bf16)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from transfer_engine.extract import extract

    with tempfile.TemporaryDirectory(prefix="te-bench-extract-") as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        images = real_images(args.images + max(1, args.images // 100))
        write_folder(folder, images[: args.images])
        base = baseline(folder, args.backbone, args.batch)
        started = time.perf_counter()
        full = extract(args.backbone, str(folder), cache, weights="none", batch_size=args.batch,
                       precision=args.precision, progress=False)
        full_seconds = time.perf_counter() - started
        te_rate = full.extracted / full_seconds
        ceiling = compute_only(args.backbone, full.precision, args.batch)
        write_folder(folder, images[args.images:], start=args.images)
        started = time.perf_counter()
        rerun = extract(args.backbone, str(folder), cache, weights="none", batch_size=args.batch,
                        precision=args.precision, progress=False)
        rerun_seconds = time.perf_counter() - started

    rows = [
        ("te extract vs plain loop (img/s)", te_rate, base, te_rate / base, 2.5),
        ("te extract vs compute-only (img/s)", te_rate, ceiling, te_rate / ceiling, 0.85),
        ("re-run +1% files vs full run (s)", rerun_seconds, full_seconds, rerun_seconds / full_seconds, 0.05),
    ]
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "backbone": args.backbone, "images": args.images, "batch": args.batch,
        "te_precision": full.precision, "te_precision_reason": full.precision_reason,
        "rerun_extracted": rerun.extracted, "rerun_reused": rerun.reused,
        "rows": [dict(zip(("benchmark", "te", "baseline", "ratio", "target"), r)) for r in rows],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.backbone}, {args.images} real JPEGs 256x256, batch {args.batch}, te precision {full.precision} "
          f"({full.precision_reason}); rerun extracted {rerun.extracted}, reused {rerun.reused}")
    print(f"{'benchmark':38} {'te':>9} {'baseline':>9} {'ratio':>7} {'target':>7}  met")
    for name, te_v, base_v, ratio, target in rows:
        met = ratio <= target if "re-run" in name else ratio >= target
        print(f"{name:38} {te_v:9.2f} {base_v:9.2f} {ratio:7.3f} {target:7.2f}  {'yes' if met else 'NO'}")


if __name__ == "__main__":
    main()
