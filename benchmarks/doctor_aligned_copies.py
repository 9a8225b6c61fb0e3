"""Would an aligned-thumbnail check tell copies from look-alikes better than the copy signature? Measured on
bench_doctor's planted sets, before te doctor is changed.

    python benchmarks/doctor_aligned_copies.py --work DIR [--domains digits,glyphs,icons,cards]

DIR is a `bench_doctor.py --work DIR` folder: its planted sets and its cache, with the features and the copy
signature already extracted (bench_doctor extracts both). For each set, te doctor runs twice at loose settings
(features alone at cosine >= 0.80; the signature rule at signature >= 0.90, features >= 0.70) and their
cross-split pairs are the candidates. Each candidate is then scored by the check this script measures:

    both images as LUMA_SIDE x LUMA_SIDE greyscale thumbnails of the whole picture; every crop box of one
    keeping at least MIN_KEPT of each side's product (CROP_STEPS x CROP_STEPS sizes, OFFSETS x OFFSETS
    positions), resampled to COMPARE_SIDE, against the other whole; both ways; the score is the largest
    normalised cross-correlation (so brightness and contrast shifts cancel).

A copy cropped by up to 10% lines up with its source under one of the boxes; a look-alike (another scan of
the same digit, one icon in two themes) does not line up pixel for pixel. Precision and recall are scored as
bench_doctor scores te doctor (its `_cross_pairs` and `_near_score`, the strict pixel rule), on a grid of
(features' floor, aligned score); the rule is chosen by mean F1 over the tuning sets and the held-out set
(cards) is reported at that rule only. The images are decoded here to make the thumbnails; te doctor itself
would read them from the cache, as a weightless backbone's features, as it reads the copy signature.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import bench_doctor

LUMA_SIDE = 64
COMPARE_SIDE = 48
MIN_KEPT = 0.86       # a crop of at most 10% of the area keeps at least 0.9 of it; some slack for the resampling
CROP_STEPS = 8
OFFSETS = 5
FLOORS = (0.7, 0.8, 0.85, 0.9)
SCORES = (0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.995)


def crop_boxes() -> np.ndarray:
    """[K, 2, 3] affine maps (torch's affine_grid convention) of every crop box the check tries."""
    boxes = []
    sides = np.linspace(MIN_KEPT, 1.0, CROP_STEPS)
    for kw in sides:
        for kh in sides:
            if kw * kh < MIN_KEPT - 1e-9:
                continue
            for ox in np.linspace(0, 1 - kw, OFFSETS if kw < 1 else 1):
                for oy in np.linspace(0, 1 - kh, OFFSETS if kh < 1 else 1):
                    boxes.append([[kw, 0, 2 * ox + kw - 1], [0, kh, 2 * oy + kh - 1]])
    return np.asarray(boxes, dtype=np.float32)


def thumbnail(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        grey = im.convert("L").resize((LUMA_SIDE, LUMA_SIDE), Image.BILINEAR)
    return np.asarray(grey, dtype=np.float32)[None] / 255.0


class AlignedScore:
    """The largest normalised cross-correlation of one image's crop boxes against the other whole, both ways."""

    def __init__(self) -> None:
        import torch
        import torch.nn.functional as F

        self.torch, self.F = torch, F
        theta = torch.from_numpy(crop_boxes())
        self.grid = F.affine_grid(theta, (len(theta), 1, COMPARE_SIDE, COMPARE_SIDE), align_corners=False)

    def _crops(self, t):
        return self.F.grid_sample(t.expand(len(self.grid), -1, -1, -1), self.grid, align_corners=False).flatten(1)

    def _whole(self, t):
        return self.F.interpolate(t, (COMPARE_SIDE, COMPARE_SIDE), mode="bilinear", align_corners=False,
                                  antialias=True).flatten()

    @staticmethod
    def _ncc(crops, whole) -> float:
        crops = crops - crops.mean(1, keepdim=True)
        whole = whole - whole.mean()
        return float(((crops @ whole) / (crops.norm(dim=1) * whole.norm() + 1e-8)).max())

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        ta, tb = self.torch.from_numpy(a)[None], self.torch.from_numpy(b)[None]
        return max(self._ncc(self._crops(ta), self._whole(tb)), self._ncc(self._crops(tb), self._whole(ta)))


def candidates(domain: str, work: Path) -> tuple[list[tuple], set[str]]:
    """The cross-split candidate pairs of one planted set, each (features' cosine, verdict, path, path,
    signature cosine or None), and the planted copies."""
    from transfer_engine.doctor import doctor

    name = f"{domain}-planted"
    root = work / domain / "planted"
    truth = json.loads((root / "truth.json").read_text())
    scratch = work / "aligned"
    loose = doctor(work / "cache", dataset=name, threshold=0.80, signature=False, folds=2, sheets=False,
                   out=scratch / name, progress=False)
    signed = doctor(work / "cache", dataset=name, signature_threshold=0.90, signature_floor=0.70, folds=2,
                    sheets=False, out=scratch / f"{name}-signature", progress=False)
    if signed.rule["by"] != "signature":
        raise SystemExit(f"{name}: the cache holds no copy signature ({signed.rule['why']}): run bench_doctor.py "
                         "--work DIR first")
    found: dict[frozenset, tuple] = {}
    for pair in bench_doctor._cross_pairs(loose, truth, root) + bench_doctor._cross_pairs(signed, truth, root):
        key = frozenset(pair[2:4])
        signature = pair[4] if pair[4] is not None else (found[key][4] if key in found else None)
        found[key] = (*pair[:4], signature)
    return list(found.values()), {t["copy"] for t in truth["near"]}


def f1(score: dict) -> float:
    p, r = score["precision"] or 0.0, score["recall"]
    return 2 * p * r / (p + r) if p + r else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True, help="a bench_doctor.py --work folder")
    parser.add_argument("--domains", default="digits,glyphs,icons,cards")
    args = parser.parse_args(argv)
    work = Path(args.work)
    check = AlignedScore()
    scored: dict[str, tuple[list[tuple], set[str]]] = {}
    for domain in args.domains.split(","):
        t0 = time.perf_counter()
        pairs, copies = candidates(domain, work)
        thumbs: dict[str, np.ndarray] = {}
        root = work / domain / "planted"
        rows = []
        for pair in pairs:
            for path in pair[2:4]:
                if path not in thumbs:
                    thumbs[path] = thumbnail(root / path)
            rows.append((*pair, check(thumbs[pair[2]], thumbs[pair[3]])))
        scored[domain] = (rows, copies)
        print(f"{domain}: {len(rows)} candidate pairs across splits, {len(copies)} planted copies, "
              f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)

    def at(domain: str, floor: float, tau: float) -> dict:
        rows, copies = scored[domain]
        return bench_doctor._near_score([r for r in rows if r[0] >= floor and r[5] >= tau], copies)

    tuning = [d for d in scored if d != bench_doctor.HELD_OUT]
    table = sorted(((float(np.mean([f1(at(d, fl, tau)) for d in tuning])), fl, tau)
                    for fl in FLOORS for tau in SCORES), reverse=True)
    for mean, fl, tau in table[:6]:
        print(f"features >= {fl:.2f}, aligned >= {tau:.3f}: mean F1 over {','.join(tuning)} {mean:.3f}; " + ", ".join(
            f"{d} P {at(d, fl, tau)['precision'] or 0:.2f} R {at(d, fl, tau)['recall']:.2f}" for d in tuning))
    _, fl, tau = table[0]
    for domain in scored:
        s = at(domain, fl, tau)
        rows, _ = scored[domain]
        signature = bench_doctor._near_score(
            [r for r in rows if r[0] >= 0.93 and r[4] is not None and r[4] >= 0.985], scored[domain][1])
        held = " (held out)" if domain == bench_doctor.HELD_OUT else ""
        print(f"{domain}{held} at the chosen rule: P {s['precision'] or 0:.2f} R {s['recall']:.2f} ({s['pairs']} "
              f"pairs); the copy signature's default rule on the same candidates: P {signature['precision'] or 0:.2f} "
              f"R {signature['recall']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
