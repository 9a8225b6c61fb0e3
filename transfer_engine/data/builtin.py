"""Built-in real data sets that need no download.

`builtin:digits` is scikit-learn's copy of the UCI handwritten digits: 1,797 real 8x8 scans of digits
written by 43 people, 10 classes. It ships inside scikit-learn, so it works offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.errors import UsageError

BUILTIN_PREFIX = "builtin:"


@dataclass
class LabeledImages:
    """Images held in memory with their labels.

    Attributes:
        name: the source name, e.g. "builtin:digits".
        images: uint8 array [N, H, W] (grayscale) or [N, H, W, 3] (RGB).
        labels: int64 array [N].
        class_names: name of each label.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int) -> "LabeledImages":
        """The first n images (all of them when n exceeds the count)."""
        return LabeledImages(self.name, self.images[:n], self.labels[:n], self.class_names)

    def pil(self, i: int):
        """Image i as an RGB PIL image (what a backbone's transform expects)."""
        from PIL import Image

        return Image.fromarray(self.images[i]).convert("RGB")


def _digits() -> LabeledImages:
    from sklearn.datasets import load_digits

    raw = load_digits()
    # The scans store ink density 0..16; render them as dark ink on white paper, 8-bit.
    ink = np.asarray(raw.images, dtype=np.float64) * (255.0 / 16.0)
    images = (255.0 - ink).round().clip(0, 255).astype(np.uint8)
    return LabeledImages(
        name="builtin:digits",
        images=images,
        labels=np.asarray(raw.target, dtype=np.int64),
        class_names=[str(int(n)) for n in raw.target_names],
    )


_BUILTINS = {"digits": _digits}


def load_builtin(source: str) -> LabeledImages:
    """Load `builtin:NAME` into memory.

    Raises:
        UsageError: no built-in data set has that name.
    """
    name = source[len(BUILTIN_PREFIX):] if source.startswith(BUILTIN_PREFIX) else source
    if name not in _BUILTINS:
        raise UsageError(f"unknown built-in data set {source!r}; available: "
                         + ", ".join(BUILTIN_PREFIX + n for n in sorted(_BUILTINS)))
    return _BUILTINS[name]()
