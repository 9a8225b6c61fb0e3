"""te extract against the loop a user writes, on a folder of real JPEGs, in one process.

    python benchmarks/bench_extract.py                 # ResNet-50 at 224, 320 images
    python benchmarks/bench_extract.py --quick --json results.json

Measured in the same run:
  baseline   torchvision ImageFolder + DataLoader(num_workers=2) + eager fp32 model, batch 32,
             inference_mode (the weights' own transform); timed over the loop
  te         `extract()` end to end: hashing, cache lookup, decode/transform threads, the model in the
             precision `--precision auto` chose, quantization, durable appends, the data set record
  compute    the model alone on random input, in te's chosen precision and layout: the ceiling
  rerun      `extract()` again after adding 1% new files
  memory     peak RSS of a `te extract` process over --rss-files files vs over 1,000: hard links to the
             JPEGs above, all in the cache already (a first run put them there), so what is measured is
             what grows with the number of files; MobileNetV3-small, whose small build transient would
             not hide that growth the way ResNet-50's does
  preprocess te's decode + transform of one JPEG (PIL, as torchvision's weights transforms) vs
             torchvision.io.decode_jpeg + tensor resize, one thread (informational: see docs/extract.md)
Targets: te >= 2.5x baseline; te >= 85% of compute; rerun <= 5% of the full run's time; peak RSS over
the many files (50,000) <= 1.01x that over 1,000 (holding each file's record, as te did before, showed
as +325 bytes a file here: +2% at 50,000). `--quick` runs 64 images and 5,000 files: start-up costs
then weigh more and 5,000 files are too few to show growth, so no row has a target there (the issue's
targets are for the full size).
The images are made from skimage.data photos and scikit-learn digits at 256x256: no download.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _results import print_rows, result_row, write_results

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


def linked_folder(root: Path, images: Path, n: int) -> Path:
    """n files in 10 class folders, hard links to the JPEGs in `images` (made in a second, no bytes copied)."""
    originals = sorted(images.rglob("*.jpg"))
    for i in range(n):
        path = root / f"class{i % 10}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        os.link(originals[i % len(originals)], path)
    return root


RSS_BACKBONE = "mobilenet_v3_small"


# The child reports its own peak (VmHWM of the image it runs): wait4's ru_maxrss would not do, because a
# child spawned from this large process inherits its high-water mark through fork and exec.
PEAK_PROBE = ("import atexit, sys\n"
              "atexit.register(lambda: print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0], "
              "file=sys.stderr))\n"
              "from transfer_engine.cli.main import main\n"
              "sys.exit(main(sys.argv[1:]))\n")


def peak_rss_mb(data: Path, cache: Path) -> float:
    """Peak resident set (MB) of a `te extract` process over `data`."""
    cmd = [sys.executable, "-c", PEAK_PROBE, "extract", "--backbone", RSS_BACKBONE, "--weights", "none",
           "--data", str(data), "--cache", str(cache), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"te extract over {data} failed: {proc.stderr.strip()[-500:]}")
    return int(proc.stderr.strip().splitlines()[-1]) / 1024  # kB


def preprocess_ms(folder: Path, backbone: str, count: int = 48) -> tuple[float, float, float]:
    """ms per JPEG, one thread: te's PIL path vs torchvision.io decode + tensor resize; and their largest
    difference in a normalized pixel."""
    from torchvision import io as tvio
    from torchvision.transforms import v2

    from transfer_engine.backbones import get_backbone_spec

    spec = get_backbone_spec(backbone).preprocess_for(None)
    datas = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))[:count]]
    pil_transform = spec.transform()
    mode = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC,
            "nearest": v2.InterpolationMode.NEAREST}[spec.interpolation]
    tensor_transform = v2.Compose([v2.Resize(spec.resize_size, interpolation=mode, antialias=True),
                                   v2.CenterCrop(spec.crop_size), v2.ToDtype(torch.float32, scale=True),
                                   v2.Normalize(mean=list(spec.mean), std=list(spec.std))])

    def te_way(data: bytes) -> torch.Tensor:
        image = Image.open(io.BytesIO(data))
        image.load()
        return pil_transform(image.convert("RGB"))

    def torchvision_io(data: bytes) -> torch.Tensor:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        return tensor_transform(tvio.decode_jpeg(raw, mode=tvio.ImageReadMode.RGB))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in te's decode threads: one image per thread
    try:
        best = {}
        for fn in (te_way, torchvision_io, te_way, torchvision_io):  # interleaved, best of two
            started = time.perf_counter()
            for data in datas:
                fn(data)
            best[fn.__name__] = min(best.get(fn.__name__, float("inf")), time.perf_counter() - started)
        diff = max(float((te_way(d) - torchvision_io(d)).abs().max()) for d in datas)
    finally:
        torch.set_num_threads(threads)
    return 1e3 * best["te_way"] / len(datas), 1e3 * best["torchvision_io"] / len(datas), diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="JPEGs to extract (default 320; 64 with --quick)")
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="te's --precision (auto, fp32, bf16)")
    parser.add_argument("--rss-files", type=int, default=None,
                        help="files of the memory run (default 50000; 5000 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results for te bench to PATH")
    args = parser.parse_args()
    images_n = args.images or (64 if args.quick else 320)
    rss_files = args.rss_files or (5000 if args.quick else 50000)

    from transfer_engine.extract import extract

    with tempfile.TemporaryDirectory(prefix="te-bench-extract-") as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        images = real_images(images_n + max(1, images_n // 100))
        write_folder(folder, images[:images_n])
        base = baseline(folder, args.backbone, args.batch)
        started = time.perf_counter()
        full = extract(args.backbone, str(folder), cache, weights="none", batch_size=args.batch,
                       precision=args.precision, progress=False)
        full_seconds = time.perf_counter() - started
        te_rate = full.extracted / full_seconds
        ceiling = compute_only(args.backbone, full.precision, args.batch)
        write_folder(folder, images[images_n:], start=images_n)
        started = time.perf_counter()
        rerun = extract(args.backbone, str(folder), cache, weights="none", batch_size=args.batch,
                        precision=args.precision, progress=False)
        rerun_seconds = time.perf_counter() - started
        few_files = linked_folder(Path(tmp) / "few", folder, 1000)
        peak_rss_mb(few_files, Path(tmp) / "rss-cache")  # extracts the unique images: the runs below reuse all
        few = peak_rss_mb(few_files, Path(tmp) / "rss-cache")
        many = peak_rss_mb(linked_folder(Path(tmp) / "many", folder, rss_files), Path(tmp) / "rss-cache")
        pil_ms, tvio_ms, pixel_diff = preprocess_ms(folder, args.backbone)

    size_note = ("quick size: start-up (model build, calibration) weighs more than at the full size, so no "
                 "target; the issue's target is for 320 images") if args.quick else None
    rss_note = f"{RSS_BACKBONE}; hard links to the benchmark's JPEGs, all reused: the per-file path alone"
    if args.quick:
        rss_note += "; quick size: too few files to show growth, so no target"

    def full_size_target(target: str) -> str | None:
        return None if args.quick else target

    growth = (many - few) * 1024 * 1024 / (rss_files - 1000)
    rows = [
        result_row("te extract vs plain loop", te_rate, base, "img/s", te_rate / base, full_size_target(">= 2.5x"),
                   size_note),
        result_row("te extract vs compute-only", te_rate, ceiling, "img/s", te_rate / ceiling,
                   full_size_target(">= 85%"), size_note),
        result_row("re-run +1% files vs full run", rerun_seconds, full_seconds, "s", rerun_seconds / full_seconds,
                   full_size_target("<= 5%"), size_note),
        result_row(f"peak RSS of te extract, {rss_files:,} vs 1,000 files", many, few, "MB", many / few,
                   full_size_target("<= 1.01x"), f"{growth:+.0f} bytes per extra file ({rss_note})"),
        result_row("preprocess a 256px JPEG: te (PIL) vs torchvision.io + tensor resize", pil_ms, tvio_ms, "ms",
                   tvio_ms / pil_ms, None,
                   f"one thread; largest normalized pixel difference {pixel_diff:.3f}: torch's resampling is faster "
                   "but changes features, so te keeps PIL (docs/extract.md)"),
    ]
    config = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                          "torch": torch.__version__},
              "quick": args.quick, "backbone": args.backbone, "images": images_n, "batch": args.batch,
              "te_precision": full.precision, "te_precision_reason": full.precision_reason,
              "rerun_extracted": rerun.extracted, "rerun_reused": rerun.reused, "rss_files": rss_files,
              "rss_backbone": RSS_BACKBONE,
              "peak_rss_mb": {"1000": round(few, 1), str(rss_files): round(many, 1)}}
    print(f"{args.backbone}, {images_n} real JPEGs 256x256, batch {args.batch}, te precision {full.precision} "
          f"({full.precision_reason}); rerun extracted {rerun.extracted}, reused {rerun.reused}")
    print(f"peak RSS of te extract ({RSS_BACKBONE}): {few:.1f} MB over 1,000 files, {many:.1f} MB over "
          f"{rss_files:,} ({growth:+.0f} bytes per extra file)")
    print_rows(rows)
    if args.json:
        write_results(args.json, "extract", rows, config)


if __name__ == "__main__":
    main()
