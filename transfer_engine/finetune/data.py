"""Images for fine-tuning: the split of every sample, augmented training batches, sharded evaluation.

Determinism is by construction, not by RNG bookkeeping: the order of epoch e is a permutation drawn from
(seed, e), and the augmentation of an image from (seed, e, image index). So a batch is the same whether
the run was resumed mid-epoch, how many loader workers decode, and how many DDP ranks share the work
(each rank takes every world-th image of each global batch).
"""

from __future__ import annotations

import dataclasses

import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from transfer_engine.backbones.spec import PreprocessSpec
from transfer_engine.data.sources import DataSource, Sample, derived_split
from transfer_engine.core.choices import AUGMENTS
from transfer_engine.core.configs import CROP_SCALE
from transfer_engine.core.paths import display_path
from transfer_engine.errors import TEError, UsageError

CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Item:
    """One labelled image of the fine-tuning data.

    Attributes:
        sample: the source's sample (how to read it).
        key: content key of its bytes.
        label: class index.
        split: "train", "val" or "test".
    """

    sample: Sample
    key: str
    label: int
    split: str


def items_from_source(source: DataSource, limit: int | None = None) -> list[Item]:
    """Every sample with the split `te extract` gives it (the source's, else derived from the key).

    Args:
        source: the data source.
        limit: only the first N samples.

    Returns:
        The items, in source order (unreadable files are skipped, as te extract skips them).
    """
    out = []
    for i, (sample, key) in enumerate(source.keyed_samples()):
        if limit is not None and i >= limit:
            break
        out.append(Item(sample, key, sample.label, sample.split or derived_split(key)))
    return out


def items_from_records(source: DataSource, records: list, limit: int | None = None) -> list[Item]:
    """The images of a cached data set with the cache's labels and splits (accuracies stay comparable).

    Files are matched to records by content key, so a renamed file still counts; a record whose image
    is gone or changed is an error (the head was trained on it).

    Args:
        source: the data source the cache's data set was extracted from.
        records: the cache data set's records (path, key, label, split).
        limit: only the first N records.

    Returns:
        One item per record, in record order.

    Raises:
        TEError: some records have no image with their content in the source.
    """
    records = records[:limit] if limit is not None else list(records)
    by_key: dict[str, Sample] = {}
    for sample, key in source.keyed_samples(with_labels=False):  # labels: the records'
        by_key.setdefault(key, sample)
    missing = [r for r in records if r.key not in by_key]
    if missing:
        raise TEError(f"{len(missing)} image(s) of the cached data set are no longer in --data (first: "
                      f"{display_path(missing[0].path)}); re-run te extract and te train, or fine-tune with --backbone/--data")
    return [Item(by_key[r.key], r.key, int(r.label), r.split) for r in records if r.label is not None]


def split_counts(items: list[Item]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for it in items:
        counts[it.split] = counts.get(it.split, 0) + 1
    return dict(sorted(counts.items()))


def scaled_preprocess(spec: PreprocessSpec, input_size: int | None) -> PreprocessSpec:
    """The backbone's preprocessing at another input size (same crop ratio, interpolation, mean, std and
    resampler: the images are resized the way the features te trained on were)."""
    if input_size is None or input_size == spec.crop_size:
        return spec
    if input_size < 16:
        raise UsageError(f"--input-size must be at least 16 pixels, got {input_size}")
    resize = max(input_size, round(input_size * spec.resize_size / spec.crop_size))
    return dataclasses.replace(spec, crop_size=input_size, resize_size=resize)


def aug_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's augmentation in one epoch."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class ImageSet(torch.utils.data.Dataset):
    """Items as normalized tensors; indexed by (item index, augmentation seed or None).

    Args:
        source: where the bytes come from.
        items: the items of one split.
        preprocess: the model's preprocessing (resize, crop, normalize).
        augment: one of AUGMENTS (applied only when the index carries a seed).
        crop_scale: the smallest area fraction of a random resized crop.
    """

    def __init__(self, source: DataSource, items: list[Item], preprocess: PreprocessSpec, augment: str,
                 crop_scale: float = CROP_SCALE) -> None:
        from torchvision.transforms import v2

        if augment not in AUGMENTS:
            raise UsageError(f"--augment must be one of {', '.join(AUGMENTS)}, got {augment!r}")
        if not 0 < crop_scale <= 1:
            raise UsageError(f"--crop-scale must be in (0, 1], got {crop_scale}")
        self.source, self.items, self.preprocess, self.augment = source, items, preprocess, augment
        self.crop_scale = crop_scale
        self.eval_transform = preprocess.transform()
        self.tensor = preprocess.resampler == "torch"  # decoded straight to a uint8 tensor, resized by torch
        self.to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                                     v2.Normalize(mean=list(preprocess.mean), std=list(preprocess.std))])
        self.mode = {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
                     "bicubic": v2.InterpolationMode.BICUBIC}[preprocess.interpolation]

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int):
        item = self.items[index]
        return self.source.decode(item.sample, self.source.read_bytes(item.sample), self.tensor)

    def __getitem__(self, key: tuple[int, int | None]) -> tuple[torch.Tensor, int]:
        index, seed = key
        image = self.image(index)
        if seed is None or self.augment == "none":
            return self.eval_transform(image), self.items[index].label
        return self._augmented(image, random.Random(seed)), self.items[index].label

    def _augmented(self, image, rng: random.Random) -> torch.Tensor:
        """torchvision's RandomResizedCrop (+ horizontal flip), drawn from `rng` instead of the global RNG."""
        from torchvision.transforms.v2 import functional as F

        height, width = image.shape[-2:] if isinstance(image, torch.Tensor) else image.size[::-1]
        top, left, h, w = _crop_box(width, height, rng, self.crop_scale)
        size = self.preprocess.crop_size
        out = F.resized_crop(image, top, left, h, w, [size, size], interpolation=self.mode, antialias=True)
        if self.augment == "crop+flip" and rng.random() < 0.5:
            out = F.horizontal_flip(out)
        return self.to_tensor(out)


def _crop_box(width: int, height: int, rng: random.Random, min_scale: float) -> tuple[int, int, int, int]:
    """RandomResizedCrop.get_params (same algorithm, area scale (min_scale, 1), CROP_RATIO), from `rng`."""
    import math

    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(min_scale, 1.0)
        ratio = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * ratio)))
        h = int(round(math.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    # Fallback: the whole image, clipped to the ratio range (as torchvision does).
    in_ratio = width / height
    if in_ratio < CROP_RATIO[0]:
        w, h = width, int(round(width / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        h, w = height, int(round(height * CROP_RATIO[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of the training items in `epoch` (same on every rank and after a resume)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, global_batch: int) -> int:
    """Optimizer steps in one epoch (the last, incomplete batch is dropped, so every step and every rank
    sees a full share; each epoch's permutation drops different images)."""
    return n // global_batch


class TrainBatches(torch.utils.data.Sampler):
    """Batches of (index, augmentation seed) for one rank, from `start_step` of `epoch` on.

    Args:
        n: number of training items.
        global_batch: images per optimizer step over all ranks.
        seed, epoch: the run's seed and the epoch.
        rank, world: this process's share (world-th images of every global batch).
        start_step: the first step to yield (a resumed run skips the steps already taken).
    """

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                 start_step: int = 0) -> None:
        self.order = epoch_order(n, seed, epoch)
        self.global_batch, self.seed, self.epoch = global_batch, seed, epoch
        self.rank, self.world, self.start_step = rank, world, start_step
        self.steps = steps_per_epoch(n, global_batch)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.steps):
            chunk = self.order[step * self.global_batch:(step + 1) * self.global_batch]
            yield [(int(i), aug_seed(self.seed, self.epoch, int(i))) for i in chunk[self.rank::self.world]]


class EvalBatches(torch.utils.data.Sampler):
    """This rank's share of a split, in order, without augmentation."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.indices = list(range(rank, n, world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, None]]]:
        for lo in range(0, len(self.indices), self.batch_size):
            yield [(i, None) for i in self.indices[lo:lo + self.batch_size]]


def loader(dataset: ImageSet, batches: torch.utils.data.Sampler, workers: int) -> torch.utils.data.DataLoader:
    """A DataLoader over `batches` that never touches the global RNG.

    DataLoader draws its workers' base seed from the global torch RNG unless given a generator; that
    would make the dropout masks of a resumed run differ from the uninterrupted one's.
    """
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                                       generator=torch.Generator().manual_seed(0),
                                       persistent_workers=False, pin_memory=False)
