"""Aligned thumbnails: is one picture a copy of the other, once the two are lined up?

A copy made the ways pictures get copied (cropped a little, resized, re-encoded, colour-shifted) lines up
pixel for pixel with its source under one crop box; a look-alike (another scan of the same digit, one icon
in two themes, two cards of one deck) does not. So for a candidate pair, from the cached thumbnails of
backbone `copy_thumbnail` (`THUMBNAIL_SIDE` px greyscale):

    every crop box of one picture that keeps at least MIN_KEPT of it (SIZES x SIZES widths and heights,
    POSITIONS x POSITIONS places for each), resampled to COMPARE_SIDE px, is compared with the other picture
    whole, resampled to the same size, by normalised cross-correlation (so brightness and contrast shifts
    cancel); both ways round; the pair's score is the largest.

How the grid was chosen (docs/doctor.md, "Aligned thumbnails"): on the tuning sets of the benchmark, with 6 x 6
sizes and 3 x 3 places a box can be a pixel off at 64 px and thin strokes (glyphs) lost their copies; 32 px
thumbnails (or comparing at 24 px) let distinct digit scans through. Cost: each picture's crops are made once
and compared with all its candidates by one matrix product; the pairs that come close (REFINE_FROM) are then
refined around their best box, since the grid can be a pixel off. A crop resampled bilinearly is a matrix on
each side of the picture (`axis_weights`: rows for the box's height and position, columns likewise), so every
crop is two small matrix products, batched. The crops are resampled with the filter the whole pictures are
(antialiased: a sample averages the source pixels it spans): resampled more sharply, a picture did not line up
exactly with itself, and copies lost their margin (docs/doctor.md, "Aligned thumbnails").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from transfer_engine.backbones.signature import THUMBNAIL_SIDE

if TYPE_CHECKING:
    from transfer_engine.doctor.matrix import CachedMatrix

COMPARE_SIDE = 48
MIN_KEPT = 0.86          # a crop of at most 10% of the area keeps 0.9 of it; slack for the resampling
SIZES = 8
POSITIONS = 5
REFINE_FROM = 0.97       # edges scoring this on the grid are refined around their best box ...
REFINE_STEPS = (0.01, 0.005)  # ... moving each of its four numbers by these fractions of the picture, in turn
EDGES_AT_ONCE = 32       # refined edges at once: EDGES_AT_ONCE x 81 crops and their resampling matrices
PICTURES_AT_ONCE = 512   # cropped pictures read at once, with the pictures they are compared with


def box_params() -> np.ndarray:
    """float64 [K, 4]: every crop box of the grid as (width, height, left, top), fractions of the picture."""
    sides = np.linspace(MIN_KEPT, 1.0, SIZES)
    boxes = []
    for kw in sides:
        for kh in sides:
            if kw * kh < MIN_KEPT - 1e-9:
                continue
            for ox in np.linspace(0, 1 - kw, POSITIONS if kw < 1 else 1):
                for oy in np.linspace(0, 1 - kh, POSITIONS if kh < 1 else 1):
                    boxes.append((kw, kh, ox, oy))
    return np.asarray(boxes, dtype=np.float64)


def axis_weights(extent, start):
    """float32 [..., COMPARE_SIDE, THUMBNAIL_SIDE]: the span [start, start + extent] (fractions of a side; tensors or
    arrays of one shape) resampled to COMPARE_SIDE samples at pixel centres with the filter the whole pictures are
    resampled with (torch's bilinear interpolation with antialias, align_corners False): a tent as wide as the
    source pixels a sample spans (at least one), its weights summing to 1 (cut at the picture's edges). The same
    filter on both sides of a comparison: a crop resampled more sharply than the picture it is compared with
    would correlate less with its own copy."""
    import torch

    extent = torch.as_tensor(extent, dtype=torch.float32)
    start = torch.as_tensor(start, dtype=torch.float32)
    spans = (extent * THUMBNAIL_SIDE / COMPARE_SIDE).clamp_min(1.0)                  # source pixels a sample spans
    centres = (torch.arange(COMPARE_SIDE, dtype=torch.float32) + 0.5) / COMPARE_SIDE  # in the crop, 0..1
    at = (start[..., None] + extent[..., None] * centres) * THUMBNAIL_SIDE - 0.5      # in source pixels
    distance = (at[..., None] - torch.arange(THUMBNAIL_SIDE, dtype=torch.float32)).abs()
    weights = (1.0 - distance / spans[..., None, None]).clamp_min(0.0)
    return weights / weights.sum(-1, keepdim=True).clamp_min(1e-12)


def _scores(crops, targets):
    """[K, T]: the normalised cross-correlation of each crop [K, D] with each target [T, D] (targets centred and
    of unit norm already), without writing the crops centred: the targets' mean is 0, so the crops' is not needed
    in the product, only in their norm."""
    dots = crops @ targets.T
    mean = crops.mean(1, keepdim=True)
    spread = ((crops * crops).sum(1, keepdim=True) - crops.shape[1] * mean * mean).clamp_min(1e-12).sqrt()
    return dots / spread


def _centred(x):
    """Rows minus their mean, divided by their norm: a dot product of two is their normalised cross-correlation."""
    x = x - x.mean(-1, keepdim=True)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _refined(params: np.ndarray, step: float) -> np.ndarray:
    """[E, 81, 4]: each box of `params` [E, 4] moved by -step, 0, +step in each of its four numbers (kept inside
    the picture and at least MIN_KEPT of each side)."""
    offsets = np.stack(np.meshgrid(*[np.array([-step, 0.0, step])] * 4, indexing="ij"), -1).reshape(-1, 4)
    local = params[:, None, :] + offsets[None]
    local[..., :2] = local[..., :2].clip(MIN_KEPT, 1.0)
    local[..., 2] = local[..., 2].clip(0.0, 1.0 - local[..., 0])
    local[..., 3] = local[..., 3].clip(0.0, 1.0 - local[..., 1])
    return local


def aligned_scores(thumbnails: "np.ndarray | CachedMatrix", pairs: np.ndarray) -> np.ndarray:
    """float32 [P]: the aligned score of each pair of rows of `thumbnails`.

    Args:
        thumbnails: float32 [U, THUMBNAIL_SIDE^2], one picture a row (any positive scale: the score ignores it):
            a NumPy matrix, or a `CachedMatrix` read PICTURES_AT_ONCE cropped pictures (and their candidates)
            at a time.
        pairs: int64 [P, 2], rows of `thumbnails`.
    """
    scores = np.full(len(pairs), -1.0, dtype=np.float32)
    if not len(pairs):
        return scores
    # directed edges: (cropped picture, whole picture, pair); each picture's crops are made once
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    pid = np.concatenate([np.arange(len(pairs)), np.arange(len(pairs))])
    order = np.argsort(src, kind="stable")
    src, dst, pid = src[order], dst[order], pid[order]
    pictures = np.unique(src)
    directed = np.empty(len(src), dtype=np.float32)
    for first in range(0, len(pictures), PICTURES_AT_ONCE):
        mine = pictures[first:first + PICTURES_AT_ONCE]
        edges = slice(np.searchsorted(src, mine[0]), np.searchsorted(src, mine[-1], side="right"))
        targets, target_row = np.unique(dst[edges], return_inverse=True)
        directed[edges] = _directed_scores(np.asarray(thumbnails[mine], dtype=np.float32),
                                           _resampled_wholes(thumbnails, targets),
                                           np.searchsorted(mine, src[edges]), target_row.reshape(-1))
    np.maximum.at(scores, pid, directed)
    return scores


def _resampled_wholes(thumbnails: "np.ndarray | CachedMatrix", rows: np.ndarray):
    """[len(rows), COMPARE_SIDE^2]: these pictures whole, resampled to COMPARE_SIDE px, centred and of unit norm
    (read PICTURES_AT_ONCE at a time)."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.inference_mode():
        for first in range(0, len(rows), PICTURES_AT_ONCE):
            whole = torch.from_numpy(np.asarray(thumbnails[rows[first:first + PICTURES_AT_ONCE]], dtype=np.float32))
            whole = whole.reshape(-1, 1, THUMBNAIL_SIDE, THUMBNAIL_SIDE)
            out.append(_centred(F.interpolate(whole, (COMPARE_SIDE, COMPARE_SIDE), mode="bilinear",
                                              align_corners=False, antialias=True).flatten(1)))
    return torch.cat(out)


def _directed_scores(pictures: np.ndarray, wholes, src_row: np.ndarray, dst_row: np.ndarray) -> np.ndarray:
    """float32 [E]: for each directed edge, the best normalised cross-correlation of a crop box of picture
    `src_row` (rows of `pictures`, float32 [S, THUMBNAIL_SIDE^2]) with whole picture `dst_row` (rows of `wholes`,
    `_resampled_wholes`); `src_row` sorted."""
    import torch

    side = THUMBNAIL_SIDE
    starts = np.searchsorted(src_row, np.arange(len(pictures)))
    ends = np.searchsorted(src_row, np.arange(len(pictures)), side="right")
    params = box_params()
    # the grid's boxes share their rows' resampling: one matrix per distinct (height, top)
    rows_of, row_index = np.unique(params[:, [1, 3]], axis=0, return_inverse=True)
    with torch.inference_mode():
        whole = torch.from_numpy(np.ascontiguousarray(pictures, dtype=np.float32)).reshape(-1, side, side)
        down = axis_weights(rows_of[:, 0], rows_of[:, 1])                               # [Ny, 48, 64]
        across = axis_weights(params[:, 0], params[:, 2]).transpose(1, 2).contiguous()  # [K, 64, 48]
        row_index = torch.from_numpy(row_index.reshape(-1))
        directed = np.empty(len(src_row), dtype=np.float32)
        best = np.empty((len(src_row), 4))
        for i, picture in enumerate(whole):
            crops = torch.bmm((down @ picture)[row_index], across).flatten(1)            # [K, 48 * 48]
            edges = slice(starts[i], ends[i])
            found = _scores(crops, wholes[torch.from_numpy(dst_row[edges])]).max(0)
            directed[edges] = found.values.numpy()
            best[edges] = params[found.indices.numpy()]
        # the grid is a pixel or so coarse: the directions that come close are refined around their best box
        close = np.flatnonzero(directed >= REFINE_FROM)
        for step in REFINE_STEPS:
            for first in range(0, len(close), EDGES_AT_ONCE):
                edges = close[first:first + EDGES_AT_ONCE]
                local = torch.from_numpy(_refined(best[edges], step))                       # [E, 81, 4]
                down_e = axis_weights(local[..., 1], local[..., 3])                          # [E, 81, 48, 64]
                across_e = axis_weights(local[..., 0], local[..., 2])
                tall = torch.einsum("ekij,ejl->ekil", down_e, whole[torch.from_numpy(src_row[edges])])
                crops = torch.einsum("ekil,ekml->ekim", tall, across_e).flatten(2)        # [E, 81, 48 * 48]
                targets = wholes[torch.from_numpy(dst_row[edges])]
                found = torch.stack([_scores(c, t[None])[:, 0] for c, t in zip(crops, targets)]).max(1)
                improved = found.values.numpy() > directed[edges]
                directed[edges[improved]] = found.values.numpy()[improved]
                best[edges[improved]] = local.numpy()[np.flatnonzero(improved), found.indices.numpy()[improved]]
    return directed


def signature_from_thumbnails(thumbnails: "np.ndarray | CachedMatrix") -> np.ndarray:
    """float32 [U, BLOCK^2 - 1], L2-normalised: the copy signature (pHash as real values) of each thumbnail,
    halved to the signature's SIZE first; its nearest neighbours are candidates the features may not give. The
    thumbnails are read a block at a time; the signatures (63 floats a row) are what is held."""
    import torch

    from transfer_engine.backbones.signature import BLOCK, SIZE, dct_matrix, low_frequencies
    from transfer_engine.doctor.matrix import blocks_of

    out = np.empty((len(thumbnails), BLOCK * BLOCK - 1), dtype=np.float32)
    with torch.inference_mode():
        for start, block in blocks_of(thumbnails):
            grey = torch.from_numpy(block).reshape(-1, 1, THUMBNAIL_SIDE, THUMBNAIL_SIDE)
            small = torch.nn.functional.adaptive_avg_pool2d(grey, SIZE)[:, 0]
            signature = low_frequencies(small, dct_matrix(SIZE)[:BLOCK])
            out[start:start + len(block)] = (signature / signature.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    return out


__all__ = ["COMPARE_SIDE", "MIN_KEPT", "POSITIONS", "SIZES", "aligned_scores", "axis_weights", "box_params",
           "signature_from_thumbnails"]
