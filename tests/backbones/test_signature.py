"""The copy signature (backbone dct_signature): a copy of a real image keeps its signature, a different real
image of the same kind does not; it is a backbone like any other (te plugins check, te extract)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from transfer_engine.backbones import create_backbone, list_backbones
from transfer_engine.core.configs.doctor import SIGNATURE_COSINE


@pytest.fixture(scope="module")
def signature():
    backbone = create_backbone("dct_signature")
    transform = backbone.transform()

    def of(image: Image.Image) -> np.ndarray:
        row = backbone(transform(image.convert("RGB"))[None])[0].numpy()
        return row / np.linalg.norm(row)

    return of


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue()))


def _copies(image: Image.Image) -> dict[str, Image.Image]:
    w, h = image.size
    return {"resized to 0.6x": image.resize((int(w * 0.6), int(h * 0.6)), Image.BICUBIC),
            "enlarged to 1.4x": image.resize((int(w * 1.4), int(h * 1.4)), Image.BICUBIC),
            "re-encoded at JPEG quality 50": _jpeg(image, 50),
            "cropped by 2% on every side": image.crop((w // 50, h // 50, w - w // 50, h - h // 50)),
            "brighter by 10%": ImageEnhance.Brightness(image).enhance(1.1),
            "contrast down 10%": ImageEnhance.Contrast(image).enhance(0.9)}


def _digits(label: int, n: int) -> list[Image.Image]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = (255.0 - digits.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    chosen = np.flatnonzero(digits.target == label)[:n]
    return [Image.fromarray(ink[i]).resize((96, 96), Image.BICUBIC).convert("RGB") for i in chosen]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_a_copy_of_a_photo_keeps_its_signature_and_another_photo_does_not(signature, name):
    from skimage import data

    image = Image.fromarray(getattr(data, name)())
    mine = signature(image)
    others = [n for n in ("astronaut", "coffee", "camera", "chelsea") if n != name]
    nearest_other = max(mine @ signature(Image.fromarray(getattr(data, n)())) for n in others)
    assert nearest_other < 0.6
    for how, copy in _copies(image).items():
        if how.startswith("cropped"):  # a crop moves the thumbnail: the signature's weak spot (docs/doctor.md),
            assert mine @ signature(copy) > nearest_other + 0.3, how  # still far closer than another photo
        else:
            assert mine @ signature(copy) >= SIGNATURE_COSINE, how


def test_two_scans_of_one_digit_are_told_apart_where_a_copy_is_not(signature):
    ones = _digits(1, 8)
    rows = np.stack([signature(image) for image in ones])
    between = rows @ rows.T
    np.fill_diagonal(between, -1)
    assert between.max() < SIGNATURE_COSINE  # distinct scans of a handwritten 1
    for how, copy in _copies(ones[0]).items():
        assert rows[0] @ signature(copy) >= SIGNATURE_COSINE, how


def test_it_is_a_weightless_builtin_backbone_that_passes_te_plugins_check():
    from transfer_engine.plugins_check import check_plugin

    assert "dct_signature" in list_backbones()
    backbone = create_backbone("dct_signature", weights="none", seed=1)
    assert backbone.weights == "none" and backbone.weights_digest == create_backbone("dct_signature").weights_digest
    report = check_plugin("signature", remember=False)  # the entry point's name
    assert report.passed, [f"{r.name} {r.check}: {r.detail}" for r in report.failures]
    assert {r.check for r in report.results if r.name == "dct_signature" and r.status == "pass"} >= {
        "build", "forward", "onnx"}
