"""Real image sets, built offline, on which frozen ImageNet features leave room.

Each is written as the most common layout, root/train/CLASS/*.png + root/test/CLASS/*.png (no val: te
holds one out of train, te train and te finetune alike).

    glyphs        the 26 capital letters rendered from every font on the machine that has them (Debian's
                  DejaVu family, matplotlib's DejaVu/STIX/Computer Modern), black on white at 224 px with a
                  seeded jitter of size, position and rotation; test fonts are fonts no train image uses
    digits-blocky scikit-learn's real 8x8 handwritten digits upscaled to 224 px without smoothing (nearest):
                  hard pixel blocks, far from any ImageNet photo
    digits-smooth the same scans upscaled with bicubic smoothing (the regression case: close to what
                  builtin:digits gives a backbone)
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 224
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
FONT_DIRS = ["/usr/share/fonts"]


def font_files() -> list[Path]:
    """Every TrueType/OpenType font that draws all 26 capitals, once per (family, style): the copies of
    DejaVu in matplotlib are other versions of Debian's, and one font in both splits would leak."""
    import matplotlib

    dirs = [Path(d) for d in FONT_DIRS] + [Path(matplotlib.get_data_path()) / "fonts" / "ttf"]
    seen, fonts = set(), []
    for d in dirs:
        for path in sorted(p for p in d.rglob("*") if p.suffix.lower() in (".ttf", ".otf")):
            try:
                name = ImageFont.truetype(str(path), 16).getname()  # (family, style): versions count once
            except OSError:
                continue
            if name not in seen and _has_capitals(path):
                seen.add(name)
                fonts.append(path)
    return fonts


def _has_capitals(path: Path) -> bool:
    try:
        font = ImageFont.truetype(str(path), 64)
    except OSError:
        return False
    missing = np.asarray(font.getmask("\u0378"))  # an unassigned code point: the font's "no glyph" box
    masks = [np.asarray(font.getmask(c)) for c in LETTERS]
    if any(m.size == 0 or m.max() == 0 for m in masks):
        return False
    shapes = {m.tobytes() for m in masks}
    return len(shapes) == len(LETTERS) and missing.tobytes() not in shapes


def _glyph(font_path: Path, letter: str, rng: random.Random) -> Image.Image:
    font = ImageFont.truetype(str(font_path), rng.randint(110, 160))
    canvas = Image.new("L", (SIZE * 2, SIZE * 2), 255)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), letter, font=font)
    x = SIZE - (left + right) // 2 + rng.randint(-20, 20)
    y = SIZE - (top + bottom) // 2 + rng.randint(-20, 20)
    draw.text((x, y), letter, font=font, fill=0)
    canvas = canvas.rotate(rng.uniform(-10, 10), resample=Image.BICUBIC, fillcolor=255)
    return canvas.crop((SIZE // 2, SIZE // 2, SIZE // 2 + SIZE, SIZE // 2 + SIZE)).convert("RGB")


def write_glyphs(root: Path, test_fraction: float = 0.3, seed: int = 0) -> dict:
    """root/{train,test}/LETTER/FONT.png, test fonts disjoint from train fonts. Returns counts."""
    fonts = font_files()
    order = sorted(fonts, key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    n_test = max(1, round(test_fraction * len(order)))
    test_fonts = set(order[:n_test])
    rng = random.Random(seed)
    for font in fonts:
        split = "test" if font in test_fonts else "train"
        for letter in LETTERS:
            folder = root / split / letter
            folder.mkdir(parents=True, exist_ok=True)
            _glyph(font, letter, rng).save(folder / f"{font.stem}.png")
    return {"fonts": len(fonts), "test_fonts": n_test, "images": 26 * len(fonts), "classes": 26}


def write_digits(root: Path, smoothing: bool, per_class: int | None = None, test_fraction: float = 0.3) -> dict:
    """root/{train,test}/DIGIT/N.png from scikit-learn's digits, upscaled to 224 px (nearest or bicubic)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = (255.0 - digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    resample = Image.BICUBIC if smoothing else Image.NEAREST
    taken: dict[int, list[int]] = {}
    for i, t in enumerate(digits.target):
        taken.setdefault(int(t), []).append(i)
    count = 0
    for label, indices in taken.items():
        indices = indices[:per_class] if per_class else indices
        n_test = round(test_fraction * len(indices))
        for j, i in enumerate(indices):
            split = "test" if j < n_test else "train"
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ink[i]).resize((SIZE, SIZE), resample).convert("RGB").save(folder / f"{i}.png")
            count += 1
    return {"images": count, "classes": 10}


DOMAINS = {
    "glyphs": lambda root, per_class: write_glyphs(root),
    "digits-blocky": lambda root, per_class: write_digits(root, smoothing=False, per_class=per_class),
    "digits-smooth": lambda root, per_class: write_digits(root, smoothing=True, per_class=per_class),
}
