"""A small real data set with planted problems, extracted once with EfficientNet-Lite0 (real ImageNet weights),
shared by the doctor tests (they only read the cache; the round trip writes a data set of its own name).

Real digits (scikit-learn's scans, smoothed to 96 px PNG files) in train/val/test, plus what te doctor must find:
byte-for-byte copies of train digits in test, one filed under another label, near copies of train digits
in test (resized, re-encoded), four train labels flipped, and one photo among the digits (an outlier).
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

PER_CLASS = {"train": 8, "val": 2, "test": 2}


@dataclass
class Planted:
    root: Path
    manifest: Path
    cache: Path
    exact: list[str] = field(default_factory=list)       # test copies of train files
    conflicting: str = ""                                  # a train file's copy under another label
    near: list[str] = field(default_factory=list)         # test near copies
    flipped: list[str] = field(default_factory=list)      # train files with a wrong label
    outlier: str = ""


def _png(array: np.ndarray, size: int = 96) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).resize((size, size), Image.BICUBIC).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


def build(root: Path) -> Planted:
    from PIL import Image
    from skimage import data as photos
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = (255.0 - digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    images = root / "images"
    rows: list[dict] = []
    taken: dict[int, int] = {}
    for i, label in enumerate(digits.target.tolist()):
        n = taken.get(label, 0)
        if n >= sum(PER_CLASS.values()):
            continue
        taken[label] = n + 1
        split = "train" if n < PER_CLASS["train"] else "val" if n < PER_CLASS["train"] + PER_CLASS["val"] else "test"
        path = images / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(ink[i]))
        rows.append({"path": f"images/{i}.png", "label": str(label), "split": split})
    planted = Planted(root, root / "manifest.csv", root / "cache")
    train = [r for r in rows if r["split"] == "train"]
    for n, r in enumerate(train[:3]):  # exact copies in test
        name = f"images/exact-{n}.png"
        shutil.copyfile(root / r["path"], root / name)
        rows.append({"path": name, "label": r["label"], "split": "test"})
        planted.exact.append(name)
    src = train[3]
    shutil.copyfile(root / src["path"], root / "images/conflict.png")
    rows.append({"path": "images/conflict.png", "label": str((int(src["label"]) + 1) % 10), "split": "train"})
    planted.conflicting = "images/conflict.png"
    for n, r in enumerate(train[10:13]):  # near copies in test: enlarged, shrunk, re-encoded
        with Image.open(root / r["path"]) as image:
            copy = [image.resize((120, 120), Image.BICUBIC), image.resize((80, 80), Image.BICUBIC), image][n]
            name = f"images/near-{n}.{'jpg' if n == 2 else 'png'}"
            copy.save(root / name, **({"quality": 98} if n == 2 else {}))
        rows.append({"path": name, "label": r["label"], "split": "test"})
        planted.near.append(name)
    for r in train[20:60:10]:  # four labels flipped
        r["label"] = str((int(r["label"]) + 5) % 10)
        planted.flipped.append(r["path"])
    Image.fromarray(photos.astronaut()).resize((64, 64)).save(root / "images/astronaut.png")
    rows.append({"path": "images/astronaut.png", "label": "3", "split": "train"})
    planted.outlier = "images/astronaut.png"
    with planted.manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return planted


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> Planted:
    """The planted set, extracted into its own cache (data set "planted")."""
    from transfer_engine.extract import extract

    p = build(tmp_path_factory.mktemp("doctor-planted"))
    extract("efficientnet_lite0", str(p.manifest), p.cache, name="planted", backend="torch", progress=False)
    return p


def planted_variant(planted: Planted, cache: Path, name: str, make_copies, backbones: tuple[str, ...]) -> list[str]:
    """Data set `name` in `cache` (a copy of the planted set's cache): the planted set plus the test images
    `make_copies(train rows)` writes under planted.root (it returns [(path, label)]), extracted with each of
    `backbones`. Returns the added paths."""
    from transfer_engine.extract import extract

    with planted.manifest.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    train = [r for r in rows if r["split"] == "train" and r["path"].split("/")[-1][0].isdigit()]
    added = make_copies(train)
    rows += [{"path": path, "label": label, "split": "test"} for path, label in added]
    manifest = planted.root / f"{name}.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    shutil.copytree(planted.cache, cache)
    for backbone in backbones:
        extract(backbone, str(manifest), cache, name=name, progress=False,
                **({"backend": "torch"} if backbone == "efficientnet_lite0" else {}))
    return [path for path, _ in added]


def doctor_on(cache: Path, dataset: str, out: Path, **fields):
    """te doctor on one data set of a variant's cache (`planted_variant`), quietly and without contact sheets:
    the `Diagnosis`."""
    from transfer_engine.doctor import doctor

    return doctor(cache, dataset=dataset, out=out, sheets=False, progress=False, **fields)


@pytest.fixture(scope="session")
def diagnosis(planted, tmp_path_factory):
    """te doctor on the planted set, once (its report in a folder of its own)."""
    from transfer_engine.doctor import doctor

    return doctor(planted.cache, out=tmp_path_factory.mktemp("doctor-out"), progress=False)
