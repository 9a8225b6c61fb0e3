"""Pictures of a run for people: learning curve, confusion matrix, sweep (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

LEARNING_CURVE = "learning_curve.png"
CONFUSION_MATRIX = "confusion_matrix.png"
SWEEP = "sweep.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: never needs a display
    import matplotlib.pyplot as plt

    return plt


def learning_curve(curve: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Training loss (left axis) and held-out accuracy (right axis) against iterations or epochs.

    Args:
        curve: entries with "step" and some of "train_loss", "val_loss", "val_accuracy".
        path: the PNG to write.
        title: the figure's title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    steps = [c["step"] for c in curve]
    unit = curve[0].get("unit", "step") if curve else "step"
    for key, label, style in (("train_loss", "train loss", "-"), ("val_loss", "val loss", "--")):
        points = [(c["step"], c[key]) for c in curve if c.get(key) is not None]
        if points:
            ax.plot(*zip(*points), style, label=label, color="tab:blue")
    ax.set_xlabel(unit)
    ax.set_ylabel("loss")
    handles, labels = ax.get_legend_handles_labels()
    accuracy = [(c["step"], 100 * c["val_accuracy"]) for c in curve if c.get("val_accuracy") is not None]
    if accuracy:
        right = ax.twinx()
        right.plot(*zip(*accuracy), color="tab:orange", label="val accuracy")
        right.set_ylabel("val accuracy (%)")
        h, lab = right.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if not steps:
        ax.text(0.5, 0.5, "no iterations (fitted in one step)", ha="center", va="center", transform=ax.transAxes)
    if handles:
        ax.legend(handles, labels, loc="center right")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.86, bottom=0.13, top=0.9)  # fixed margins: no second layout draw
    fig.savefig(path)
    plt.close(fig)
    return path


def confusion_matrix(matrix: torch.Tensor, class_names: list[str], path: Path, title: str) -> Path:
    """Row-normalized confusion matrix (true class down, predicted across), counts written in the cells
    when there are few enough classes to read them."""
    plt = _pyplot()
    counts = matrix.double()
    rates = counts / counts.sum(1, keepdim=True).clamp_min(1)
    n = len(class_names)
    size = min(12.0, max(4.0, 0.35 * n + 2.5))
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=110)
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 30:
        ticks = list(range(n))
        ax.set_xticks(ticks, class_names, rotation=90 if max(map(len, class_names)) > 3 else 0, fontsize=8)
        ax.set_yticks(ticks, class_names, fontsize=8)
        for i in range(n):
            for j in range(n):
                if counts[i, j] > 0:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.1, right=0.84, bottom=0.12, top=0.92)
    fig.savefig(path)
    plt.close(fig)
    return path


def sweep(trials: Sequence[dict[str, Any]], chosen: dict[str, Any], path: Path, title: str) -> Path:
    """Val accuracy of every sweep trial against the swept value (weight decay, or the head's option), and
    the k-fold accuracy of the finalists with its interval when they were cross-validated."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    key = next((k for k in ("weight_decay", *sorted(chosen.get("options", {}))) if _varies(trials, k)), "weight_decay")
    groups: dict[str, list[tuple[float, float]]] = {}
    for t in trials:
        x = t.get(key, t.get("options", {}).get(key))
        label = f"lr {t['lr']:g}" if t.get("lr") is not None and key == "weight_decay" else "trials"
        groups.setdefault(label, []).append((float(x), 100 * t["val_accuracy"]))
    for label, points in sorted(groups.items()):
        points.sort()
        ax.plot(*zip(*points), "o-", label=label, markersize=4)
    finalists = [t for t in trials if t.get("kfold_accuracy") is not None]
    if finalists:  # k-fold selection: the finalists' score over train+val, with its 95% interval
        xs = [float(t.get(key, t.get("options", {}).get(key))) for t in finalists]
        ys = [100 * t["kfold_accuracy"] for t in finalists]
        below = [y - 100 * t["kfold_interval"][0] for y, t in zip(ys, finalists)]
        above = [100 * t["kfold_interval"][1] - y for y, t in zip(ys, finalists)]
        ax.errorbar(xs, ys, yerr=[below, above], fmt="s", color="black", capsize=3, markersize=4,
                    label="k-fold over train+val (95%)")
    best = chosen.get(key, chosen.get("options", {}).get(key))
    if best is not None:
        ax.axvline(float(best), color="gray", linestyle=":", label=f"chosen {key} = {best:g}")
    if key == "weight_decay" and all(float(t.get(key) or 0) > 0 for t in trials):
        ax.set_xscale("log")
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel("accuracy (%)" if finalists else "val accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.subplots_adjust(left=0.12, right=0.95, bottom=0.13, top=0.9)
    fig.savefig(path)
    plt.close(fig)
    return path


def _varies(trials: Sequence[dict[str, Any]], key: str) -> bool:
    values = {repr(t.get(key, t.get("options", {}).get(key))) for t in trials}
    return len(values) > 1
