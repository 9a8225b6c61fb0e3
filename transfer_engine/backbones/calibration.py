"""A backbone tried on a few of the user's own images, and how close two ways of computing its features are.

te extract chooses its backend, precision and resampler by running each candidate on a calibration batch
(the first images of the data set that decode, preprocessed for the backbone) and comparing its features
row by row with PyTorch fp32's (`row_cosines`); te compare measures an int8 graph's features against
fp32's the same way, on images preprocessed as te extract preprocesses them (`calibration_batch`).
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable

import torch

CALIBRATION_IMAGES = 8  # enough to expose a candidate that breaks; each costs two passes per candidate


def calibration_images(source, samples: Iterable, limit: int) -> list[tuple[Any, bytes]]:
    """The first `limit` samples that decode, with their bytes: the calibrations then time and compare
    images that every path can read. (Checked with the tensor decoder, on every core: it reads what PIL
    reads, without PIL's RGB copy.)"""
    def readable(sample) -> tuple[Any, bytes | None]:
        try:
            data = source.read_bytes(sample)
            source.decode(sample, data, True)
        except Exception:  # a bad file is reported by the extraction itself
            return sample, None
        return sample, data

    out: list[tuple[Any, bytes]] = []
    remaining = iter(samples)
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        while len(out) < limit:
            chunk = list(itertools.islice(remaining, limit - len(out)))
            if not chunk:
                break
            out += [(sample, data) for sample, data in pool.map(readable, chunk) if data is not None]
    return out


def calibration_batch(backbone, source, samples: Iterable, limit: int = CALIBRATION_IMAGES) -> torch.Tensor | None:
    """The first `limit` decodable images of `samples`, preprocessed for `backbone` (None: none decodes)."""
    return preprocessed(backbone, source, calibration_images(source, samples, limit))


def preprocessed(backbone, source, images: list[tuple[Any, bytes]]) -> torch.Tensor | None:
    """Images given as (sample, bytes), decoded and preprocessed for `backbone` (None: there are none)."""
    transform = backbone.transform()
    tensor = backbone.preprocess.resampler == "torch"
    tensors = [transform(source.decode(sample, data, tensor)) for sample, data in images]
    return torch.stack(tensors) if tensors else None


def row_cosines(reference: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """The cosine between matching rows, in float64 with no norm floor: features of some randomly
    initialized nets are ~1e-13 (EfficientNet-B0), where torch's eps=1e-8 floor would report 0; two
    all-zero rows agree."""
    a, b = reference.double(), candidate.double()
    na, nb = a.norm(dim=1), b.norm(dim=1)
    cos = (a * b).sum(dim=1) / (na * nb).clamp_min(torch.finfo(torch.float64).tiny)
    cos[(na == 0) & (nb == 0)] = 1.0
    return cos


def min_row_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """The lowest of `row_cosines` (1.0 for no rows)."""
    cos = row_cosines(reference, candidate)
    return float(cos.min()) if len(cos) else 1.0


__all__ = ["CALIBRATION_IMAGES", "calibration_batch", "calibration_images", "min_row_cosine", "preprocessed",
           "row_cosines"]
