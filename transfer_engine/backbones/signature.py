"""te's copy signature: a backbone whose "features" say whether two images are the same picture.

`dct_signature` is pHash (the perceptual hash imagededup and most de-duplication tools use) kept as real
numbers, so a cosine compares two of them and te's cache, neighbour search and te doctor read it like any
backbone's features:

- the image is resized without distortion (shorter side, then a centre crop, as every backbone's
  `PreprocessSpec`) to a small square of `SIZE` pixels: detail a re-encode or a resize changes is gone;
- it becomes greyscale (ITU-R BT.601 luma);
- a 2-D DCT-II (orthonormal: a fixed matrix product on each side) turns it into frequencies, and the
  `BLOCK` x `BLOCK` lowest are kept without the DC term: a brightness shift moves only the DC term and
  a contrast change scales every coefficient alike, so both cancel under the cosine.

There are no weights to download: the DCT matrix is a buffer computed from its formula, so `weights=()`
and te builds it as a "random" initialization whose result does not depend on the seed (te extract
records `--weights none`, the weights digest is the DCT matrix's). Its cost is two small matrix products
per image: decoding dominates its extraction. Registered through the `transfer_engine.backbones` entry
point `signature` in pyproject.toml, as a plugin's would be. te doctor reads this space, when the cache
holds it for the data set, to confirm near duplicates (transfer_engine/doctor/near_duplicates.py;
docs/doctor.md says how `SIZE` and `BLOCK` were chosen).

`copy_thumbnail`, from the same entry point, is the picture itself, small: the luma of a `THUMBNAIL_SIDE` px
square (shorter side resized, centre crop), `THUMBNAIL_SIDE`^2 numbers. te doctor lines two of them up
(`doctor.aligned`: every crop box of one against the other whole) to tell a cropped, resized, re-encoded or
colour-shifted copy, which lines up pixel for pixel, from a look-alike, which does not (docs/doctor.md,
"Aligned thumbnails").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transfer_engine.backbones.spec import BackboneSpec, PreprocessSpec

NAME = "dct_signature"
THUMBNAIL_NAME = "copy_thumbnail"
THUMBNAIL_SIDE = 64  # docs/doctor.md, "Aligned thumbnails": 32 px lost the digits' precision, 128 px gained nothing
SIZE = 32         # side of the greyscale square the DCT reads (pHash's); docs/doctor.md, "The copy signature"
BLOCK = 8         # the BLOCK x BLOCK lowest frequencies are kept, less the DC term (pHash's)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, what PIL's convert("L") uses


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix (n x n): row k is the k-th cosine basis vector."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    m = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.to(torch.float32)


class DctSignature(nn.Module):
    """[N, 3, size, size] normalized images -> [N, block * block - 1] low DCT frequencies of their luma."""

    def __init__(self, size: int = SIZE, block: int = BLOCK, std: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        super().__init__()
        # luma of the un-normalized pixels: sum_c LUMA_c * (x_c * std_c + mean_c); the mean only moves the
        # DC term, which is dropped, so only std enters.
        self.register_buffer("luma", torch.tensor([w * s for w, s in zip(LUMA, std)], dtype=torch.float32))
        self.register_buffer("basis", dct_matrix(size)[:block].contiguous())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return low_frequencies(torch.einsum("nchw,c->nhw", images, self.luma), self.basis)


def low_frequencies(grey: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """[N, block * block - 1]: the lowest 2-D DCT frequencies of greyscale squares [N, size, size], without the
    DC term; `basis` is `dct_matrix(size)[:block]`."""
    coefficients = basis @ grey @ basis.T  # [N, block, block]
    return coefficients.flatten(1)[:, 1:]


PREPROCESS = PreprocessSpec(crop_size=SIZE, resize_size=SIZE, interpolation="bilinear", mean=(0.0, 0.0, 0.0),
                            std=(1.0, 1.0, 1.0))
THUMBNAIL_PREPROCESS = PreprocessSpec(crop_size=THUMBNAIL_SIDE, resize_size=THUMBNAIL_SIDE, interpolation="bilinear",
                                      mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


class LumaThumbnail(nn.Module):
    """[N, 3, side, side] images in [0, 1] -> [N, side * side] their luma, row by row."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("luma", torch.tensor(LUMA, dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,c->nhw", images, self.luma.to(images.dtype)).flatten(1)


def _build(weights: str | None) -> nn.Module:
    return DctSignature(SIZE, BLOCK, PREPROCESS.std).eval()


def _build_thumbnail(weights: str | None) -> nn.Module:
    return LumaThumbnail().eval()


def backbones() -> list[BackboneSpec]:
    """The entry point: the copy signature's and the copy thumbnail's specs."""
    return [BackboneSpec(
        name=NAME,
        feature_dim=BLOCK * BLOCK - 1,
        build=_build,
        preprocess=PREPROCESS,
        description=f"copy signature for te doctor: the {BLOCK}x{BLOCK} lowest DCT frequencies (no DC) of a "
                    f"{SIZE}x{SIZE} greyscale thumbnail (pHash as real values); no weights",
    ), BackboneSpec(
        name=THUMBNAIL_NAME,
        feature_dim=THUMBNAIL_SIDE * THUMBNAIL_SIDE,
        build=_build_thumbnail,
        preprocess=THUMBNAIL_PREPROCESS,
        description=f"copy thumbnail for te doctor: the {THUMBNAIL_SIDE}x{THUMBNAIL_SIDE} greyscale picture, which "
                    "te doctor lines up with its near neighbours' to tell copies from look-alikes; no weights",
    )]


__all__ = ["BLOCK", "DctSignature", "LumaThumbnail", "NAME", "SIZE", "THUMBNAIL_NAME", "THUMBNAIL_SIDE", "backbones",
           "dct_matrix", "low_frequencies"]
