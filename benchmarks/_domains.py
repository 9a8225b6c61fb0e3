"""Real image sets, built offline, on which frozen ImageNet features leave room.

Each is written as the most common layout, root/train/CLASS/*.png + root/test/CLASS/*.png (no val: te
holds one out of train, te train and te finetune alike).

    glyphs        the 26 capital letters rendered from Debian's DejaVu family and matplotlib's DejaVu/STIX/
                  Computer Modern fonts (34 fonts), black on white at 224 px with a seeded jitter of size,
                  position and rotation; test fonts are fonts no train image uses
    typefaces     the same letters, drawn the same way, from the 205 fonts of 19 other Debian font packages
                  (TYPEFACE_PACKAGES: URW's base 35, TeX Gyre, Liberation, Roboto, Lato, Go, ...): 5,330
                  images, glyphs' kind at glyphs' size times six. Held out of every choice of te doctor's and
                  reported on its own (benchmarks/bench_doctor.py)
    digits-blocky scikit-learn's real 8x8 handwritten digits upscaled to 224 px without smoothing (nearest):
                  hard pixel blocks, far from any ImageNet photo
    digits-smooth the same scans upscaled with bicubic smoothing (the regression case: close to what
                  builtin:digits gives a backbone)
    icons         drawn artwork: desktop icons of 8 kinds (the icon theme's context: actions, apps,
                  categories, devices, emblems, mimetypes, places, status) from every icon theme installed
                  under /usr/share/icons (Debian: adwaita, tango, gnome, mate, oxygen, faenza, papirus,
                  breeze, elementary-xfce, gnome-colors), at most PER_THEME_CLASS icons of a theme per kind;
                  test themes are themes no train icon comes from
    cards         playing cards of 13 ranks (A, 2-10, J, Q, K) from KDE's SVG card decks
                  (kdegames-card-data-kf5, /usr/share/carddecks), rendered with rsvg-convert; test decks
                  are decks no train card comes from. Kept out of every choice made on the fine-tuning
                  recipe, and reported on its own (docs/finetune.md)
"""

from __future__ import annotations

import gzip
import hashlib
import random
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SIZE = 224
LETTERS = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
# glyphs' fonts: Debian's DejaVu (fonts-dejavu-core) and matplotlib's own. Named, not "every font on the
# machine": a font package installed later (typefaces') must not change the glyphs set.
FONT_DIRS = ["/usr/share/fonts/truetype/dejavu"]
# typefaces' fonts: every font of these packages that draws all 26 capitals (205 of 206 files)
TYPEFACE_PACKAGES = ("fonts-urw-base35 fonts-texgyre fonts-freefont-ttf fonts-crosextra-carlito fonts-crosextra-caladea "
                     "fonts-linuxlibertine fonts-roboto-unhinted fonts-lato fonts-open-sans fonts-cantarell "
                     "fonts-ebgaramond fonts-noto-mono fonts-inconsolata fonts-hack fonts-comic-neue fonts-quicksand "
                     "fonts-lobster fonts-go fonts-liberation2")


def font_files() -> list[Path]:
    """glyphs' fonts: each font of FONT_DIRS and matplotlib's that draws all 26 capitals, once per (family,
    style): the copies of DejaVu in matplotlib are other versions of Debian's, and one font in both splits
    would leak."""
    import matplotlib

    dirs = [Path(d) for d in FONT_DIRS] + [Path(matplotlib.get_data_path()) / "fonts" / "ttf"]
    return _distinct_fonts(p for d in dirs for p in sorted(d.rglob("*")))


def typeface_files() -> list[Path]:
    """typefaces' fonts: those of TYPEFACE_PACKAGES (`dpkg -L`) that draw all 26 capitals, once per (family,
    style), leaving out any (family, style) glyphs uses.

    Raises:
        MissingData: a package is not installed (the message names them all).
    """
    packages = TYPEFACE_PACKAGES.split()
    try:
        listed = [subprocess.run(["dpkg", "-L", p], capture_output=True, text=True) for p in packages]
    except OSError:  # no dpkg: not a Debian system
        listed = []
    if not listed or any(r.returncode for r in listed):
        raise MissingData(f"the typefaces data set needs: apt-get install {TYPEFACE_PACKAGES}")
    taken = {ImageFont.truetype(str(p), 16).getname() for p in font_files()}
    return _distinct_fonts((Path(line) for r in listed for line in sorted(r.stdout.split())), taken)


def _distinct_fonts(paths, taken: set | None = None) -> list[Path]:
    """The TrueType/OpenType files among `paths` that draw all 26 capitals, the first of each (family, style)
    (versions of one font count once) not in `taken`."""
    seen, fonts = set(taken or ()), []
    for path in paths:
        if path.suffix.lower() not in (".ttf", ".otf") or not path.is_file():
            continue
        try:
            name = ImageFont.truetype(str(path), 16).getname()
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


def write_glyphs(root: Path, test_fraction: float = 0.3, seed: int = 0, fonts: list[Path] | None = None) -> dict:
    """root/{train,test}/LETTER/FONT.png from `fonts` (default: glyphs', `font_files`), test fonts disjoint from
    train fonts. Returns counts."""
    fonts = font_files() if fonts is None else fonts
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


ICON_DIR = Path("/usr/share/icons")
ICON_KINDS = ("actions", "apps", "categories", "devices", "emblems", "mimetypes", "places", "status")
PER_THEME_CLASS = 30
DECK_DIR = Path("/usr/share/carddecks")
RANKS = {"1": "A", "2": "2", "3": "3", "4": "4", "5": "5", "6": "6", "7": "7", "8": "8", "9": "9", "10": "10",
         "jack": "J", "queen": "Q", "king": "K"}
SUITS = ("club", "diamond", "heart", "spade")
PACKAGES = {"icons": "adwaita-icon-theme tango-icon-theme gnome-icon-theme mate-icon-theme oxygen-icon-theme "
                     "faenza-icon-theme papirus-icon-theme breeze-icon-theme elementary-xfce-icon-theme "
                     "gnome-colors-common librsvg2-bin",
            "cards": "kdegames-card-data-kf5 librsvg2-bin"}


class MissingData(RuntimeError):
    """The Debian packages a data set is built from are not installed (the message says which)."""


def _require(name: str, ok: bool) -> None:
    if not ok or shutil.which("rsvg-convert") is None:
        raise MissingData(f"the {name} data set needs: apt-get install {PACKAGES[name]}")


def _split_of(key: str, test_fraction: float) -> str:
    """'test' for about test_fraction of the keys (themes, decks), by a hash: the same on every machine."""
    return "test" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) < test_fraction * 16 ** 8 else "train"


def _on_white(image: Image.Image, fill: float) -> Image.Image:
    """`image` (RGBA) cropped to what it draws, scaled to `fill` of SIZE, centred on a white square."""
    image = image.convert("RGBA")
    box = image.getchannel("A").getbbox()
    if box is None:
        raise ValueError("nothing drawn")
    image = image.crop(box)
    scale = fill * SIZE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
    canvas = Image.new("RGBA", (SIZE, SIZE), (255, 255, 255, 255))
    canvas.alpha_composite(image, ((SIZE - image.width) // 2, (SIZE - image.height) // 2))
    return canvas.convert("RGB")


def _rsvg(svg: Path, out: Path, export_id: str | None = None, height: int | None = None) -> Image.Image:
    cmd = ["rsvg-convert", str(svg), "-o", str(out)] + (["-i", export_id, "-z", "2"] if export_id else [])
    cmd += ["-h", str(height)] if height else []
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return Image.open(out)


def _icon_files() -> dict[tuple[str, str], dict[str, Path]]:
    """{(theme, kind): {icon name: its best file}}: the largest PNG of at least 48 px, else the SVG."""
    best: dict[tuple[str, str], dict[str, tuple[int, Path]]] = {}
    for theme in sorted(p for p in ICON_DIR.iterdir() if p.is_dir()):
        for path in theme.rglob("*"):
            if path.suffix not in (".png", ".svg") or "symbolic" in path.name or path.is_symlink():
                continue
            parts = set(path.relative_to(theme).parts[:-1])
            kinds = [k for k in ICON_KINDS if k in parts]
            if len(kinds) != 1:
                continue
            size = next((int(p.split("x")[0]) for p in parts if re.fullmatch(r"\d+x\d+", p)), 0)
            rank = 10_000 if path.suffix == ".svg" and size == 0 else size  # scalable first, then the largest PNG
            if path.suffix == ".png" and size < 48:
                continue
            family = theme.name.split("-")[0].lower().removeprefix("epapirus")  # Papirus-Dark, ePapirus: one family
            family = family or "papirus"
            slot = best.setdefault((family, kinds[0]), {})
            if path.stem not in slot or rank > slot[path.stem][0]:
                slot[path.stem] = (rank, path)
    files = {key: {name: path for name, (_, path) in icons.items()} for key, icons in best.items()}
    # A family is a theme only when it draws most kinds (hicolor, desktop-base: a handful of app icons).
    kinds = {family: sum(1 for (f, _), icons in files.items() if f == family and len(icons) >= 10)
             for family, _ in files}
    return {key: icons for key, icons in files.items() if kinds[key[0]] >= 6}


def write_icons(root: Path, test_fraction: float = 0.3, per_theme_class: int = PER_THEME_CLASS) -> dict:
    """root/{train,test}/KIND/THEME-NAME.png: the icons of each theme family, test families unseen in train."""
    _require("icons", ICON_DIR.is_dir())
    files = _icon_files()
    families = sorted({family for family, _ in files})
    _require("icons", len(families) >= 3)
    # At least one family in test, at least two in train, whatever the hash says.
    order = sorted(families, key=lambda f: hashlib.sha256(f.encode()).hexdigest())
    n_test = min(len(families) - 2, max(1, round(test_fraction * len(families))))
    test = set(order[:n_test])
    jobs = []
    for (family, kind), icons in sorted(files.items()):
        names = sorted(icons, key=lambda n: hashlib.sha256(f"{family}/{n}".encode()).hexdigest())[:per_theme_class]
        split = "test" if family in test else "train"
        jobs += [(icons[n], root / split / kind / f"{family}-{n}.png") for n in names]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        written = sum(pool.map(lambda job: _write_icon(*job, Path(tmp)), jobs))
    return {"families": len(families), "test_families": sorted(test), "images": written, "classes": len(ICON_KINDS)}


def _write_icon(source: Path, out: Path, tmp: Path) -> int:
    try:
        if source.suffix == ".svg":
            image = _rsvg(source, tmp / f"{out.parent.name}-{out.name}", height=2 * SIZE)
        else:
            image = Image.open(source)
        image = _on_white(image, 0.8)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out)
    return 1


def write_cards(root: Path, test_fraction: float = 0.3) -> dict:
    """root/{train,test}/RANK/DECK-SUIT.png from every SVG deck, test decks unseen in train."""
    decks = sorted(DECK_DIR.glob("svg-*/*.svg*")) if DECK_DIR.is_dir() else []
    _require("cards", bool(decks))
    order = sorted(decks, key=lambda p: hashlib.sha256(p.parent.name.encode()).hexdigest())
    n_test = max(1, round(test_fraction * len(decks)))
    test = {p.parent.name for p in order[:n_test]}
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(2) as pool:
        counts = list(pool.map(lambda deck: _write_deck(deck, root, deck.parent.name in test, Path(tmp)), decks))
    return {"decks": sum(1 for c in counts if c), "test_decks": sorted(test), "images": sum(counts),
            "classes": len(RANKS)}


def _write_deck(deck: Path, root: Path, test: bool, tmp: Path) -> int:
    """The 52 cards of one deck; a deck rsvg-convert cannot render card by card is left out (0)."""
    name = deck.parent.name.removeprefix("svg-")
    svg = tmp / f"{name}.svg"
    svg.write_bytes(gzip.decompress(deck.read_bytes()) if deck.suffix == ".svgz" else deck.read_bytes())
    cards = {}
    for rank_id, rank in RANKS.items():
        for suit in SUITS:
            try:
                image = _rsvg(svg, tmp / f"{name}-{rank_id}-{suit}.png", export_id=f"{rank_id}_{suit}")
                box = image.getchannel("A").getbbox() if image.mode == "RGBA" else None
            except (OSError, ValueError, subprocess.SubprocessError):
                return 0
            if box is None or not 1.2 < (box[3] - box[1]) / max(1, box[2] - box[0]) < 1.8:
                return 0  # not one card (a deck whose ids name groups of another shape)
            cards[(rank, suit)] = _on_white(image, 0.95)
    for (rank, suit), image in cards.items():
        folder = root / ("test" if test else "train") / rank
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{name}-{suit}.png")
    return len(cards)


DOMAINS = {
    "glyphs": lambda root, per_class: write_glyphs(root),
    "digits-blocky": lambda root, per_class: write_digits(root, smoothing=False, per_class=per_class),
    "digits-smooth": lambda root, per_class: write_digits(root, smoothing=True, per_class=per_class),
    "icons": lambda root, per_class: write_icons(root),  # per_class counts digits; icons: PER_THEME_CLASS
    "cards": lambda root, per_class: write_cards(root),
    "typefaces": lambda root, per_class: write_glyphs(root, fonts=typeface_files()),
}
HELD_OUT = "cards"  # never looked at while choosing te finetune's recipe; reported on its own
