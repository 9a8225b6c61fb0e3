"""The one rule for a validation split that a data set does not have (no torch, no cache).

`te train` and `te finetune` both select on val. A data set laid out as train/ + test/ has none, so
both hold out the same images of train: per class, the `HOLDOUT_FRACTION` of its images with the
smallest content keys. Keys are uniform hashes, so this is a random, stratified choice that never
changes: the val `te finetune` selects on is exactly the one `te train` selected on, whether the
images come from the cache's records or from --data.
"""

from __future__ import annotations

from typing import Protocol, Sequence, TypeVar

# Share of each class's train images held out for selection when the data set has no val split.
HOLDOUT_FRACTION = 0.15


class Labelled(Protocol):
    key: str
    label: int


T = TypeVar("T", bound=Labelled)


def hold_out(train: Sequence[T]) -> tuple[list[T], list[T]]:
    """(train without the held-out images, the held-out val), both in `train`'s order.

    A class with a single image keeps it in train; a class of n >= 2 gives max(1, round(15% of n)) and
    at most n - 1. Copies of one image (one key) stay together.
    """
    by_class: dict[int, list[T]] = {}
    for item in train:
        by_class.setdefault(item.label, []).append(item)
    held: set[str] = set()
    for items in by_class.values():
        if len(items) < 2:
            continue
        count = min(len(items) - 1, max(1, round(HOLDOUT_FRACTION * len(items))))
        held.update(item.key for item in sorted(items, key=lambda item: item.key)[:count])
    return [item for item in train if item.key not in held], [item for item in train if item.key in held]
