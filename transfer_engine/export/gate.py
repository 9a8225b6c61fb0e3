"""The int8 gate as a statistical statement (no numpy, no torch).

A quantized model is deployed when its top-1 agreement with the float model is, with 95% confidence, at
least the floor (`--min-agreement`, 0.99 by default) on images of the run's kind that chose nothing else:
the **one-sided 95% Wilson lower bound** of (agreed, images) must reach the floor.

Why this rule (docs/export.md, "The int8 gate"):
- agreement needs no labels, so it can rest on many images (the selection set: images of the run's kind
  its model was not fitted on, neither test nor calibration images), and the bound says how many it rests
  on: 99 of 100 images agreeing does not show 99%;
- the claim is one-sided ("at least the floor"), so the bound is the one-sided 95% one (z = 1.645, the
  lower end of a two-sided 90% interval);
- Wilson's interval stays inside [0, 1] and keeps its coverage near 100%, where a normal interval does not;
- a set too small to support the floor is said to be so, with the number of images it would take: with
  every image agreeing the bound is n / (n + z^2), so a floor f needs n >= z^2 f / (1 - f) images
  (268 for 99%).
Extra views of the same images (flips, crops) are not counted as images: their agreements are correlated
with the original's, so counting them would narrow the interval without adding evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transfer_engine.core.selection import wilson_interval

Z95_ONE_SIDED = 1.6448536269514722  # the normal quantile a one-sided 95% bound uses


@dataclass(frozen=True)
class AgreementGate:
    """top-1 agreement >= `floor` with one-sided `confidence` (only 95%: `z`)."""

    floor: float
    z: float = Z95_ONE_SIDED

    def lower_bound(self, agreed: int, images: int) -> float:
        """The one-sided 95% Wilson lower bound of the agreement (0 for no images)."""
        return wilson_interval(agreed, images, self.z)[0] if images > 0 else 0.0

    def passes(self, agreed: int, images: int) -> bool:
        return images > 0 and self.lower_bound(agreed, images) >= self.floor

    def images_needed(self, rate: float = 1.0) -> int | None:
        """The fewest images on which agreement at `rate` has a lower bound reaching the floor (None: no
        number of images will do, because `rate` is not above the floor)."""
        if rate >= 1.0:
            return None if self.floor >= 1.0 else math.ceil(self.z * self.z * self.floor / (1.0 - self.floor) - 1e-9)
        if rate <= self.floor:
            return None
        low, high = 1, 2
        while self.lower_bound(math.floor(rate * high), high) < self.floor:
            low, high = high, high * 2
            if high > 10**9:
                return None
        while high - low > 1:
            mid = (low + high) // 2
            if self.lower_bound(math.floor(rate * mid), mid) >= self.floor:
                high = mid
            else:
                low = mid
        return high

    def supported_by(self, images: int) -> bool:
        """Whether `images` selection images can meet the floor at all (every one of them agreeing)."""
        needed = self.images_needed(1.0)
        return needed is not None and images >= needed

    def describe(self, agreed: int, images: int) -> str:
        """The agreement, the images it rests on and its 95% lower bound, in words."""
        rate = agreed / images if images else 0.0
        return (f"{rate:.1%} ({agreed} of {images} images; 95% lower bound "
                f"{self.lower_bound(agreed, images):.1%})")

    def verdict(self, agreed: int, images: int) -> dict[str, Any]:
        """The report's entry: {agreed, images, agreement, lower_bound, floor, passed}."""
        return {"agreed": agreed, "images": images, "agreement": agreed / images if images else None,
                "lower_bound": self.lower_bound(agreed, images), "floor": self.floor,
                "passed": self.passes(agreed, images)}

    def too_few(self, images: int, why_none: str = "") -> str:
        """Why `images` selection images cannot support the gate, and what would (`why_none`: why there are
        none, when there are none)."""
        needed = self.images_needed(1.0)
        if images == 0 and needed is not None:
            return (f"no images to judge int8 on ({why_none or 'none given'}); pass --selection-data SRC with at "
                    f"least {needed} images of this kind that the model was not fitted on (labels not needed)")
        if needed is None:
            return (f"a gate of {self.floor:.1%} agreement can never be shown with 95% confidence on a finite set "
                    "of images; lower --min-agreement")
        return (f"{images} selection image(s) cannot support a {self.floor:.1%} gate: even with every one of them "
                f"agreeing, the 95% lower bound reaches {self.floor:.1%} only from {needed} images; pass "
                "--selection-data SRC with more images of this kind that the model was not fitted on (labels not "
                "needed) or lower --min-agreement")


__all__ = ["AgreementGate", "Z95_ONE_SIDED"]
