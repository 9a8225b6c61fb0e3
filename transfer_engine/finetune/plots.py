"""Pictures of a fine-tuning run for people: the per-epoch curve and the confusion matrix."""

from __future__ import annotations

from pathlib import Path


def plot_curve(path: Path, history: list[dict], before: dict, title: str) -> None:
    """Validation accuracy and training loss per epoch (epoch 0 = the starting model).

    Args:
        path: the PNG to write.
        history: metrics.json["epochs"].
        before: metrics.json["before"] (the starting model's val accuracy is the curve's first point).
        title: the figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [0] + [h["epoch"] for h in history]
    val = [before.get("val_accuracy")] + [h["val_accuracy"] for h in history]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_acc.plot(epochs, [None if v is None else 100 * v for v in val], marker="o", label="val")
    ax_acc.plot([h["epoch"] for h in history], [100 * h["train_accuracy"] for h in history], marker="o",
                label="train (augmented batches)")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    ax_acc.grid(alpha=0.3)
    ax_loss.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [before.get("val_loss")] + [h["val_loss"] for h in history], marker="o", label="val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: Path, confusion: list[list[int]], class_names: list[str], title: str) -> None:
    """The confusion matrix (rows: true class, columns: predicted), counts in the cells when it is small."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(confusion)
    n = len(class_names)
    size = min(12.0, 2.5 + 0.35 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(m, cmap="Blues")
    if n <= 30:
        ticks = range(n)
        ax.set_xticks(ticks, class_names, rotation=90 if n > 10 else 0)
        ax.set_yticks(ticks, class_names)
        peak = m.max() if m.size else 0
        for i in range(n):
            for j in range(n):
                if m[i, j]:
                    ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if m[i, j] > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
