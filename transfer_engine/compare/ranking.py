"""How `te compare` ranks backbones and what it recommends: one rule, stated in the recommendation.

The linear probe's score ranks (its k-fold accuracy under k-fold selection, `core.selection`; its val
accuracy otherwise; LogME with --quick). The leader is the best score; the backbones the data cannot
tell from it are "within noise" (k-fold: a paired McNemar test on the out-of-fold predictions; val: the
least difference two val accuracies need, an unpaired normal bound); and the recommendation is the
fastest (fp32, batch 32) of the leader and those within its noise. It names both when they differ, so
"within noise" and the recommendation never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from transfer_engine.core.format import percent_interval
from transfer_engine.core.selection import Z95, CrossValidated, wilson_interval

if TYPE_CHECKING:
    from transfer_engine.compare.results import Entry


@dataclass(frozen=True)
class Verdict:
    """The leader (best score), the backbones within its noise, the recommended one, and the sentence."""

    leader: str | None
    tied: tuple[str, ...]
    chosen: str | None
    text: str


@dataclass(frozen=True)
class ChartPoint:
    """One backbone on compare.png: x = latency at batch 1 (ms), y and its 95% interval [low, high]."""

    backbone: str
    x: float
    y: float
    low: float
    high: float


def val_noise(a: float, b: float, n: int) -> float:
    """The least difference between two accuracies measured on n val images each that is not chance at
    95% (normal approximation of two binomial proportions, independent: a bound, not a paired test)."""
    return Z95 * math.sqrt((a * (1 - a) + b * (1 - b)) / n)


def rank(entries: Sequence["Entry"]) -> list["Entry"]:
    """The entries best first by their ranking score (`Entry.rank_value`); a backbone that failed last."""
    return sorted(entries, key=lambda e: (e.error is not None, -e.rank_value))


def selected_by(ranked: Sequence["Entry"], quick: bool) -> str:
    """"LogME" (--quick), "kfold" when every ranked backbone's linear probe was cross-validated, else "val"."""
    if quick:
        return "LogME"
    scored = [e for e in ranked if e.error is None]
    return "kfold" if scored and all(e.linear_kfold for e in scored) else "val"


def ranked_by(selected_by: str, folds: int) -> str:
    """The ranking score in words (compare.json's `ranked_by`, the chart's axis)."""
    return {"LogME": "LogME", "val": "linear probe val accuracy",
            "kfold": f"linear probe {folds}-fold accuracy over train+val"}[selected_by]


def recommend(ranked: Sequence["Entry"], selected_by: str) -> Verdict:
    """The verdict on `ranked` (best first) under `selected_by` ("kfold", "val" or "LogME")."""
    good = [e for e in ranked if e.error is None and e.rank_value > -math.inf]
    if not good:
        return Verdict(None, (), None, "no backbone could be ranked (see the errors in each row)")
    best = good[0]
    if selected_by == "LogME":
        return Verdict(best.backbone, (), best.backbone,
                       f"{best.backbone}: the highest LogME ({best.logme:.3f}); fit probes (without --quick) before "
                       "choosing: LogME ranks, it does not promise an accuracy")
    tied = [e for e in good[1:] if _within_noise(best, e)]
    chosen = max([best, *tied], key=lambda e: e.fp32_images_per_second)  # the first of equals: the leader
    names = tuple(e.backbone for e in tied)
    how = _evidence(best)
    lead = f"the most accurate linear probe by {how} ({_score(best)})"
    if not tied:
        others = "; no other backbone is within its noise" if len(good) > 1 else ""
        return Verdict(best.backbone, names, best.backbone, f"{best.backbone}: {lead}{others}")
    test = _noise_test(best, tied)
    if chosen is best:
        return Verdict(best.backbone, names, best.backbone,
                       f"{best.backbone}: {lead}, and the fastest of those it cannot be told apart from "
                       f"({', '.join(names)}: {test})")
    return Verdict(best.backbone, names, chosen.backbone,
                   f"{chosen.backbone}: the fastest at batch 32 (fp32{_speedup(chosen, best)}) of "
                   f"{', '.join([best.backbone, *names])}, which {how} cannot tell apart ({test}); "
                   f"{best.backbone} scored highest ({_score(best)} against {_score(chosen)})")


def _speedup(chosen: "Entry", best: "Entry") -> str:
    if not best.fp32_images_per_second:
        return ""
    return f", {chosen.fp32_images_per_second / best.fp32_images_per_second:.1f}x {best.backbone}'s images/s"


def _kfold(e: "Entry") -> CrossValidated | None:
    return CrossValidated.from_dict(e.linear_kfold) if e.linear_kfold else None


def _within_noise(best: "Entry", other: "Entry") -> bool:
    a, b = _kfold(best), _kfold(other)
    if a is not None and b is not None and a.pool == b.pool:
        return a.within_noise(b)
    if a is not None and b is not None:  # scored on different pools (not paired): the unpaired bound
        return a.accuracy - b.accuracy < val_noise(a.accuracy, b.accuracy, min(a.total, b.total))
    if best.linear_val is None or other.linear_val is None or not best.val_images:
        return False
    return best.linear_val - other.linear_val < val_noise(best.linear_val, other.linear_val, best.val_images)


def _evidence(e: "Entry") -> str:
    if e.linear_kfold:
        return f"{e.linear_kfold['k']}-fold cross-validation over {e.linear_kfold['total']} train+val images"
    return f"{e.val_images} val images" if e.val_images else "val"


def _noise_test(best: "Entry", tied: list["Entry"]) -> str:
    if best.linear_kfold:
        return "a paired McNemar test on their out-of-fold predictions, p >= 0.05"
    margin = max(val_noise(best.linear_val, e.linear_val, best.val_images) for e in tied)
    return f"differences below {100 * margin:.1f} points are not significant at 95%"


def _score(e: "Entry") -> str:
    return percent_interval(e.linear_accuracy, interval(e))


def interval(e: "Entry") -> tuple[float, float]:
    """The 95% interval of the linear probe's ranking score: k-fold's Wilson interval on the pooled
    out-of-fold predictions, or the Wilson interval of the val accuracy on its val images."""
    if e.linear_kfold:
        low, high = e.linear_kfold["interval"]
        return (low, high)
    if e.linear_val is None or not e.val_images:
        return (e.linear_val or 0.0, e.linear_val or 0.0)
    return wilson_interval(round(e.linear_val * e.val_images), e.val_images)


def chart_points(entries: Sequence["Entry"], selected_by: str) -> list[ChartPoint]:
    """What compare.png draws: each ranked backbone with a measured latency, its score (percent; LogME
    with --quick, without an interval) and the score's 95% interval."""
    points = []
    for e in entries:
        if e.error is not None or e.fp32_latency_ms is None:
            continue
        if selected_by == "LogME":
            if e.logme is not None:
                points.append(ChartPoint(e.backbone, e.fp32_latency_ms, e.logme, e.logme, e.logme))
            continue
        if e.linear_accuracy is None:
            continue
        low, high = interval(e)
        points.append(ChartPoint(e.backbone, e.fp32_latency_ms, 100 * e.linear_accuracy, 100 * low, 100 * high))
    return points


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two equally long score lists: +1 same order, -1 reversed (ties count neither)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else 0.0


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both (lower x, higher y), by increasing x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front
