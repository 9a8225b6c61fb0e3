"""Real multi-megapixel photo sets for the extract benchmark, made offline from Debian's desktop backgrounds.

    python benchmarks/_photos.py [ROOT]    # build (or find) the extract benchmark's sets under ROOT, say what they hold

Sources: every JPEG, PNG and WebP of at least 4 megapixels that the packages install, deduplicated by the
SHA-256 of their bytes (KDE ships one picture under a dozen screen-size names, Lomiri a symlink to Ubuntu's):
  tuning     /usr/share/backgrounds: mate-backgrounds, ukui-wallpapers, lomiri-wallpapers, gnome-backgrounds
             (53 distinct sources on Debian 12)
  held_out   /usr/share/wallpapers: plasma-workspace-wallpapers (34 distinct sources on Debian 12); never used
             for any choice, reported on its own (desktop-base's wallpapers there are SVG: none qualifies)
They are real camera photographs and rendered artwork both (gnome's 4096 px patterns, KDE's abstract
pieces); no reliable way tells them apart here (most photographs had their EXIF stripped), so both stay,
as both are what users extract. Each source is re-encoded as JPEG at each of a few qualities (one distinct
file per quality; PIL, 4:2:0 chroma, as most cameras write) at its own resolution, or downscaled (Lanczos)
to a given number of megapixels. Alpha is composited onto white; grayscale stays grayscale.

Layout under ROOT (default $TE_BENCH_PHOTOS, else ~/.cache/transfer_engine/bench-photos):
  store/SHA16-SIZE-qQ.jpg                 each encoded file once, named by its source's content: building
                                          twice, or another selection of the same sources, reuses it
  sets/NAME-SIZE-qQ1-Q2-DIGEST/CLASS/*.jpg  hard links into store/ in ImageFolder layout, CLASS = the
                                          Debian package that installs the source (its top folder elsewhere);
                                          DIGEST names the selection of sources, so a set is built once
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SET_FOLDERS = {"tuning": Path("/usr/share/backgrounds"), "held_out": Path("/usr/share/wallpapers")}
PACKAGES = {"tuning": ("mate-backgrounds", "ukui-wallpapers", "lomiri-wallpapers", "gnome-backgrounds"),
            "held_out": ("plasma-workspace-wallpapers",)}
EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
MIN_PIXELS = 4_000_000
QUALITIES = (95, 85, 75)
SECOND_QUALITIES = (90, 80, 70)  # the same pictures as other files: the extract benchmark's second (decided) folder
DPKG_INFO = Path("/var/lib/dpkg/info")


@dataclass(frozen=True)
class Source:
    """One distinct image of at least MIN_PIXELS: the first path with these bytes, in sorted order."""

    path: Path
    sha256: str
    label: str  # the class folder: the installing package, or the top folder under the set's folder
    width: int
    height: int
    set_name: str

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def stem(self) -> str:
        """A readable file name: KDE's wallpapers are named by their folder (Autumn/contents/images/2560x1600.jpg)."""
        parts = [p for p in self.path.relative_to(SET_FOLDERS[self.set_name]).with_suffix("").parts
                 if p not in ("contents", "images")]
        return "_".join(parts)


def default_root() -> Path:
    """Where the sets are built: $TE_BENCH_PHOTOS, else ~/.cache/transfer_engine/bench-photos."""
    env = os.environ.get("TE_BENCH_PHOTOS")
    return Path(env) if env else Path.home() / ".cache" / "transfer_engine" / "bench-photos"


def missing_packages(names=tuple(PACKAGES)) -> list[str]:
    """The packages of sets `names` that are not installed (dpkg's record; without dpkg, whether the set's
    folder exists at all)."""
    out = []
    for name in names:
        for package in PACKAGES[name]:
            listed = DPKG_INFO / f"{package}.list"
            installed = listed.exists() if DPKG_INFO.is_dir() else SET_FOLDERS[name].is_dir()
            if not installed:
                out.append(package)
    return out


@functools.lru_cache(maxsize=1)
def _owners() -> dict[str, str]:
    """{installed path: package} from dpkg's file lists of the background packages and of those they pull in
    (lomiri-wallpapers installs its pictures through lomiri-wallpapers-16.04 and -20.04)."""
    owners: dict[str, str] = {}
    for package in (p for packages in PACKAGES.values() for p in packages):
        for listed in sorted(DPKG_INFO.glob(f"{package}*.list")):
            for line in listed.read_text(errors="replace").splitlines():
                owners.setdefault(line, listed.stem.split(":")[0])
    return owners


@functools.lru_cache(maxsize=None)
def sources(name: str, min_pixels: int = MIN_PIXELS) -> tuple[Source, ...]:
    """The distinct images of set `name` with at least `min_pixels` pixels, sorted by SHA-256 (a fixed
    order that favours no package); () when the set's folder is absent."""
    folder = SET_FOLDERS[name]
    if not folder.is_dir():
        return ()
    found: dict[str, Source] = {}
    for path in sorted(folder.rglob("*"), key=lambda p: (p.is_symlink(), str(p))):  # real files name a source first
        if path.suffix.lower() not in EXTENSIONS or not path.is_file():
            continue
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in found:
            continue
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, Image.DecompressionBombError):
            continue
        if width * height < min_pixels:
            continue
        top = path.relative_to(folder).parts[0] if len(path.relative_to(folder).parts) > 1 else folder.name
        label = _owners().get(str(path), top)
        found[digest] = Source(path, digest, label, width, height, name)
    return tuple(sorted(found.values(), key=lambda s: s.sha256))


def _size_tag(megapixels: float | None) -> str:
    return "full" if megapixels is None else f"{megapixels:g}mp"


def _pixels(source: Source, megapixels: float | None) -> Image.Image:
    """The source's pixels as an RGB (or grayscale) image, downscaled to `megapixels` when given."""
    Image.MAX_IMAGE_PIXELS = None  # our own installed files, checked to be images above
    with Image.open(source.path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", rgba.size, (255, 255, 255))
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        if megapixels is not None and source.width * source.height > megapixels * 1e6:
            scale = (megapixels * 1e6 / (source.width * source.height)) ** 0.5
            size = (max(1, round(source.width * scale)), max(1, round(source.height * scale)))
            image = image.resize(size, Image.LANCZOS, reducing_gap=3.0)
        return image


def _encoded(store: Path, source: Source, megapixels: float | None, qualities) -> list[Path]:
    """store/SHA16-SIZE-qQ.jpg of each quality, encoded now when absent (decoding the source once)."""
    paths = [store / f"{source.sha256[:16]}-{_size_tag(megapixels)}-q{q}.jpg" for q in qualities]
    todo = [(q, p) for q, p in zip(qualities, paths) if not p.exists()]
    if todo:
        image = _pixels(source, megapixels)
        for quality, path in todo:
            fd, tmp = tempfile.mkstemp(dir=store, suffix=".part")
            with os.fdopen(fd, "wb") as out:
                image.save(out, format="JPEG", quality=quality)
            os.replace(tmp, path)  # whole files only: a killed build leaves a .part, never half a JPEG
    return paths


def photo_sets(root: str | Path | None = None, *, qualities=QUALITIES, megapixels: float | None = None,
               limit: int | None = None, names=tuple(SET_FOLDERS)) -> dict[str, Path]:
    """ImageFolder trees of the real-photo sets, built under `root` (reused when built already).

    Args:
        root: where to build (default `default_root()`).
        qualities: JPEG qualities; each source gives one file per quality.
        megapixels: None keeps each source's resolution (all >= 4 MP); a number downscales to about that.
        limit: the first `limit` sources of each set (smaller runs); None for all.
        names: which sets ("tuning", "held_out").

    Returns:
        {name: folder} of the sets that have sources here; a set whose packages are missing is left out
        (`missing_packages` names them).
    """
    root = Path(root) if root is not None else default_root()
    store = root / "store"
    store.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        chosen = sources(name)[:limit]
        if not chosen:
            continue
        digest = hashlib.sha256("\n".join(s.sha256 for s in chosen).encode()).hexdigest()[:12]
        folder = root / "sets" / f"{name}-{_size_tag(megapixels)}-q{'-'.join(map(str, qualities))}-{digest}"
        if not folder.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            building = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".building-"))
            for source in chosen:
                (building / source.label).mkdir(exist_ok=True)
                for quality, path in zip(qualities, _encoded(store, source, megapixels, qualities)):
                    _link(path, building / source.label / f"{source.stem}-{source.sha256[:8]}-q{quality}.jpg")
            try:
                os.rename(building, folder)
            except OSError:  # another process built it meanwhile: keep theirs
                shutil.rmtree(building, ignore_errors=True)
        out[name] = folder
    return out


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links: a copy
        shutil.copyfile(src, dst)


def describe(folder: Path) -> str:
    """'N JPEGs of S sources, M-X MP (median Y), classes: ...' for the folder of a set."""
    files = sorted(folder.rglob("*.jpg"))
    sizes = []
    for path in files:
        with Image.open(path) as image:
            sizes.append(image.size[0] * image.size[1] / 1e6)
    sizes.sort()
    stems = {p.stem.rsplit("-q", 1)[0] for p in files}
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not sizes:
        return "empty"
    return (f"{len(files)} JPEGs of {len(stems)} sources, {sizes[0]:.1f}-{sizes[-1]:.1f} MP "
            f"(median {sizes[len(sizes) // 2]:.1f}), classes: {', '.join(classes)}")


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else default_root()
    missing = missing_packages()
    if missing:
        print(f"missing: apt-get install {' '.join(missing)}")
    for megapixels in (None, 2.0):
        for qualities in (QUALITIES, SECOND_QUALITIES):
            for name, folder in photo_sets(root, qualities=qualities, megapixels=megapixels).items():
                print(f"{name} ({_size_tag(megapixels)}): {folder}\n  {describe(folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
