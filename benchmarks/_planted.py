"""Real image sets with planted problems, for te doctor's benchmark and its threshold's calibration.

    python benchmarks/_planted.py DOMAIN OUT      # build OUT/manifest.csv, OUT/images/..., OUT/truth.json

A base set is one of benchmarks/_domains.py's real sets (root/{train,test}/CLASS/*.png; val is carved out
of train by a hash of the file's name). Into it go, each drawn with a fixed seed:
  near duplicates  a train image's copy made the way pictures get copied in practice, by one or two (drawn)
                   of: cropped (at most MAX_CROP of its area cut off, from random sides), resized (RESIZE
                   times its size), its colours shifted a little (brightness, contrast and saturation each
                   within COLOUR_SHIFT), re-encoded as JPEG (quality in JPEG_QUALITY; a copy not re-encoded
                   is saved as PNG); `operations` fixes the list instead (the stress case: all four). The
                   copy is put in test or val with the source's label. Its bytes differ from the source's:
                   only the features can find it.
  exact duplicates a train image's file copied byte for byte into test or val (same label), and a few more
                   copies given another class's label (a conflicting label: the same picture filed twice).
  label errors     FLIP_SHARE of the train+val images (neither a source of a duplicate nor a copy) get
                   another class's label in the manifest, uniformly among the other classes.
The images themselves are never changed; the manifest (path,label,split) carries the planted labels and
splits, and truth.json what was planted where. `transform` is the near-copy recipe, shared with the
calibration (bench_doctor.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageEnhance

MAX_CROP = 0.10           # of the area
RESIZE = (0.5, 1.5)       # times the width and height
COLOUR_SHIFT = 0.10       # brightness, contrast and saturation each multiplied by 1 +- up to this
JPEG_QUALITY = (50, 95)
OPERATIONS = ("crop", "resize", "colour", "re-encode")
FLIP_SHARE = 0.05
VAL_SHARE = 0.15
NEAR_SHARE = 0.05         # near-duplicate copies: this share of the base images
EXACT_SHARE = 0.01        # exact copies across the split; half as many again with a conflicting label
SEED = 0


def transform(image: Image.Image, rng: random.Random, operations: tuple[str, ...] | None = None
              ) -> tuple[bytes, str, dict]:
    """A near copy of `image`: (its file's bytes, its suffix, what was done), drawn from `rng`.

    `operations`: which of OPERATIONS to apply, in that order (None: one or two of them, drawn). A copy
    re-encoded is a JPEG; any other is saved as PNG (lossless: only its pixels' change counts).
    """
    if operations is None:
        operations = tuple(sorted(rng.sample(OPERATIONS, rng.choice((1, 2))), key=OPERATIONS.index))
    out = image.convert("RGB")
    how: dict = {"operations": list(operations)}
    if "crop" in operations:
        w, h = out.size
        area = rng.uniform(1 - MAX_CROP, 1)             # the share of the picture kept
        keep_w = rng.uniform(area, 1)                   # split between the width and the height
        cw, ch = round(w * keep_w), round(h * area / keep_w)
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        out = out.crop((left, top, left + cw, top + ch))
        how["kept_area"] = round(cw * ch / (w * h), 3)
    if "resize" in operations:
        scale = rng.uniform(*RESIZE)
        out = out.resize((max(8, round(out.width * scale)), max(8, round(out.height * scale))), Image.BICUBIC)
        how["scale"] = round(scale, 3)
    if "colour" in operations:
        for name, enhance in (("brightness", ImageEnhance.Brightness), ("contrast", ImageEnhance.Contrast),
                              ("saturation", ImageEnhance.Color)):
            factor = 1 + rng.uniform(-COLOUR_SHIFT, COLOUR_SHIFT)
            out = enhance(out).enhance(factor)
            how[name] = round(factor, 3)
    if "re-encode" in operations:
        quality = rng.randint(*JPEG_QUALITY)
        how["quality"] = quality
        return jpeg_bytes(out, quality), ".jpg", how
    buffer = io.BytesIO()
    out.save(buffer, "PNG")
    return buffer.getvalue(), ".png", how


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _val(path: str) -> bool:
    return int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) < VAL_SHARE * 16 ** 8


def base_images(root: Path) -> list[tuple[str, str, str]]:
    """(path relative to root, class, split) of a _domains set, val carved out of train by the name's hash."""
    out = []
    for split in ("train", "test"):
        for path in sorted((root / split).rglob("*.png")):
            rel = path.relative_to(root).as_posix()
            out.append((rel, path.parent.name, "val" if split == "train" and _val(rel) else split))
    return out


def plant(base: Path, out: Path, *, near_share: float = NEAR_SHARE, exact_share: float = EXACT_SHARE,
          flip_share: float = FLIP_SHARE, seed: int = SEED, operations: tuple[str, ...] | None = None) -> dict:
    """Write OUT/images (the base images and the copies), OUT/manifest.csv and OUT/truth.json.

    Returns:
        The truth: {"near": [{"copy", "source", "split", ...}], "exact": [...], "conflicting": [...],
        "flipped": [{"path", "label", "given"}], "images", "classes"}.
    """
    rng = random.Random(seed)
    rows = base_images(base)
    classes = sorted({c for _, c, _ in rows})
    images = out / "images"
    if out.exists():
        shutil.rmtree(out)
    for rel, _, _ in rows:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / rel, images / rel)
    manifest = [{"path": f"images/{rel}", "label": c, "split": s} for rel, c, s in rows]
    train = [i for i, r in enumerate(manifest) if r["split"] == "train"]
    n_near = max(2, round(near_share * len(rows)))
    n_exact = max(2, round(exact_share * len(rows)))
    n_conflict = max(1, n_exact // 2)
    sources = rng.sample(train, n_near + n_exact + n_conflict)
    truth: dict = {"near": [], "exact": [], "conflicting": [], "flipped": [], "classes": classes}
    copies = out / "images" / "copies"
    copies.mkdir(parents=True)
    for n, i in enumerate(sources):
        src = manifest[i]
        split = "test" if rng.random() < 0.7 else "val"
        if n < n_near:
            with Image.open(out / src["path"]) as image:
                data, suffix, how = transform(image, rng, operations)
            name = f"images/copies/near-{n:04d}{suffix}"
            (out / name).write_bytes(data)
            manifest.append({"path": name, "label": src["label"], "split": split})
            truth["near"].append({"copy": name, "source": src["path"], "split": split, **how})
        elif n < n_near + n_exact:
            name = f"images/copies/exact-{n:04d}.png"
            shutil.copyfile(out / src["path"], out / name)
            manifest.append({"path": name, "label": src["label"], "split": split})
            truth["exact"].append({"copy": name, "source": src["path"], "split": split})
        else:
            name = f"images/copies/conflict-{n:04d}.png"
            shutil.copyfile(out / src["path"], out / name)
            other = rng.choice([c for c in classes if c != src["label"]])
            split = rng.choice(["train", "val", "test"])
            manifest.append({"path": name, "label": other, "split": split})
            truth["conflicting"].append({"copy": name, "source": src["path"], "split": split, "label": other,
                                         "source_label": src["label"]})
    taken = set(sources)
    pool = [i for i, r in enumerate(manifest[:len(rows)]) if r["split"] in ("train", "val") and i not in taken]
    for i in sorted(rng.sample(pool, round(flip_share * len(pool)))):
        row = manifest[i]
        given = rng.choice([c for c in classes if c != row["label"]])
        truth["flipped"].append({"path": row["path"], "label": row["label"], "given": given})
        row["label"] = given
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(manifest)
    truth["images"] = len(manifest)
    truth["base_images"] = len(rows)
    (out / "truth.json").write_text(json.dumps(truth, indent=1))
    return truth


if __name__ == "__main__":
    from _domains import DOMAINS

    domain, target = sys.argv[1], Path(sys.argv[2])
    base_dir = target / "base"
    if not base_dir.exists():
        print(DOMAINS[domain](base_dir, None), file=sys.stderr)
    result = plant(base_dir, target / "planted")
    print(json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in result.items()}))
