"""The one rule for choosing among candidates on small data (no torch): `te train --sweep` chooses heads and
hyper-parameters with it, `te compare` backbones.

On a small data set one val split is too few images to choose on: a few images decide the winner, and
the next draw of val would pick another. So, when train+val holds at most `KFOLD_MAX_RECORDS` records
(`--select auto`), every candidate is judged by stratified k-fold cross-validation over train+val:

- folds: per class, the distinct content keys in sorted order are dealt round-robin to the k folds.
  Keys are uniform hashes, so this is a random choice, exactly stratified (a class's fold sizes differ
  by at most one), and the same images land in the same fold on every run and machine. Copies of one
  image (one key) share a fold. Test is never part of the pool;
- score: the pooled out-of-fold accuracy (each image predicted once, by the fit that did not see it)
  with a Wilson score interval at 95% on (correct, total): it stays inside [0, 1] near 100%, where a
  normal interval or a t interval over k fold accuracies does not;
- "within noise": two candidates predicted the same images, so they are compared pairwise: an exact
  McNemar test on the images exactly one of them gets right, within noise when p >= `ALPHA`.

Larger data keeps the single val split: there it holds enough images to tell candidates apart, and k
folds would cost k fits per candidate for little gain (docs/train.md, "Choosing on small data").
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

from transfer_engine.core.choices import SELECTIONS
from transfer_engine.errors import UsageError

# --select (SELECTIONS): "auto" = "kfold" up to KFOLD_MAX_RECORDS train+val records, "val" above.
DEFAULT_SELECT = "auto"
DEFAULT_FOLDS = 5
# Above this many train+val records a val split of the usual share holds enough images that one image
# moves its accuracy by little, and k-fold's k fits per candidate are not worth their cost.
KFOLD_MAX_RECORDS = 5000
Z95 = 1.959963984540054  # two-sided 95% of the normal distribution
ALPHA = 0.05             # a paired difference with p below this is not noise


class Keyed(Protocol):
    key: str
    label: int


def check_select(select: str) -> None:
    """Refuse a --select that is not one of `SELECTIONS`."""
    if select not in SELECTIONS:
        raise UsageError(f"--select must be one of {', '.join(SELECTIONS)}, got {select!r}")


def resolve_selection(select: str, pool_size: int) -> str:
    """"kfold" or "val": what `select` means for a train+val pool of `pool_size` records."""
    check_select(select)
    if select == "auto":
        return "kfold" if pool_size <= KFOLD_MAX_RECORDS else "val"
    return select


def check_folds(folds: int) -> None:
    """Refuse a fold count that cannot cross-validate."""
    if folds < 2:
        raise UsageError(f"--folds must be at least 2 (each fold is judged by a fit on the others), got {folds}")


def assign_folds(pool: Sequence[Keyed], k: int) -> list[int]:
    """The fold (0..k-1) of each item of `pool` (train+val records or rows), in `pool`'s order.

    Per class, the distinct keys in sorted order go to folds 0, 1, ..., k-1, 0, 1, ...; an image whose
    key was dealt in an earlier class keeps that fold.

    Raises:
        UsageError: k < 2, or fewer distinct images than folds.
    """
    check_folds(k)
    by_class: dict[int, set[str]] = {}
    for item in pool:
        by_class.setdefault(item.label, set()).add(item.key)
    fold_of: dict[str, int] = {}
    for label in sorted(by_class):
        fresh = sorted(key for key in by_class[label] if key not in fold_of)
        fold_of.update((key, i % k) for i, key in enumerate(fresh))
    if len(fold_of) < k:
        raise UsageError(f"{k}-fold cross-validation needs at least {k} distinct train+val images, the data set "
                         f"has {len(fold_of)}; use --folds {max(2, len(fold_of))} or --select val")
    return [fold_of[item.key] for item in pool]


def pool_digest(keys: Sequence[str]) -> str:
    """Names a pool (its keys in order): two scores are paired only when they judged the same pool."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion correct/total (95% by default)."""
    if total <= 0:
        return (0.0, 1.0)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> float:
    """Exact two-sided McNemar p-value: how likely the split of the images exactly one of A and B got right
    is, were both equally accurate (1.0 when no image tells them apart)."""
    if len(a_correct) != len(b_correct):
        raise ValueError(f"paired predictions of different lengths ({len(a_correct)} and {len(b_correct)})")
    only_a = sum(1 for a, b in zip(a_correct, b_correct) if a and not b)
    only_b = sum(1 for a, b in zip(a_correct, b_correct) if b and not a)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** n)


@dataclass(frozen=True)
class CrossValidated:
    """A candidate's k-fold score.

    Attributes:
        k: folds.
        correct: per pooled image (train+val in the pool's order), whether the fit that did not see it
            predicted it right.
        fold_accuracies: accuracy on each fold.
        pool: `pool_digest` of the pooled keys (scores of different pools are not paired).
    """

    k: int
    correct: tuple[bool, ...]
    fold_accuracies: tuple[float, ...]
    pool: str

    @property
    def total(self) -> int:
        return len(self.correct)

    @property
    def hits(self) -> int:
        return sum(self.correct)

    @property
    def accuracy(self) -> float:
        return self.hits / self.total if self.total else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.hits, self.total)

    def p_value(self, other: "CrossValidated") -> float:
        """The paired McNemar p-value against `other` (scored on the same pool)."""
        if other.pool != self.pool:
            raise ValueError("k-fold scores of different image pools cannot be paired")
        return mcnemar_p(self.correct, other.correct)

    def within_noise(self, other: "CrossValidated") -> bool:
        """Whether the pooled images cannot tell this candidate from `other` (paired, at `ALPHA`)."""
        return self.p_value(other) >= ALPHA

    def to_dict(self) -> dict[str, Any]:
        low, high = self.interval
        return {"k": self.k, "accuracy": self.accuracy, "interval": [low, high], "correct": self.hits,
                "total": self.total, "fold_accuracies": list(self.fold_accuracies), "pool": self.pool,
                "out_of_fold": _pack(self.correct)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CrossValidated":
        """The inverse of `to_dict` (a score read back from metrics.json or compare.json)."""
        return cls(int(d["k"]), _unpack(d["out_of_fold"], int(d["total"])), tuple(d["fold_accuracies"]),
                   str(d["pool"]))


def tied_with(best: CrossValidated, others: Sequence[CrossValidated]) -> list[int]:
    """Positions in `others` of the candidates the pooled images cannot tell from `best`."""
    return [i for i, o in enumerate(others) if o is not best and best.within_noise(o)]


def _pack(bits: Sequence[bool]) -> str:
    """Per-image correctness as hex (4 images a digit, the first image the highest bit)."""
    digits = []
    for start in range(0, len(bits), 4):
        chunk = list(bits[start:start + 4]) + [False] * (4 - len(bits[start:start + 4]))
        digits.append("%x" % sum(1 << (3 - i) for i, b in enumerate(chunk) if b))
    return "".join(digits)


def _unpack(text: str, total: int) -> tuple[bool, ...]:
    bits = [bool(int(c, 16) >> (3 - i) & 1) for c in text for i in range(4)]
    return tuple(bits[:total])
