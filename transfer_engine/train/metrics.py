"""How good a head is on a split: accuracy, loss, confusion matrix, per-class recall, macro F1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from torch import nn

    from transfer_engine.train.data import Split, TrainingData

EVAL_BATCH = 8192


@dataclass
class Evaluation:
    """A head's predictions on one split and what follows from them.

    Attributes:
        split: the split's name.
        accuracy: fraction of rows predicted right (0..1).
        loss: mean cross-entropy of the logits.
        predictions: int64 [N] predicted labels.
        labels: int64 [N] true labels.
        num_classes: C (for the confusion matrix).
    """

    split: str
    accuracy: float
    loss: float
    predictions: torch.Tensor
    labels: torch.Tensor
    num_classes: int

    def confusion(self) -> torch.Tensor:
        """int64 [C, C]: row = true class, column = predicted class."""
        flat = self.labels * self.num_classes + self.predictions
        return torch.bincount(flat, minlength=self.num_classes ** 2).view(self.num_classes, self.num_classes)

    def per_class_recall(self, class_names: list[str]) -> dict[str, float | None]:
        """{class name: recall}; None for a class with no rows in this split."""
        cm = self.confusion()
        support = cm.sum(1)
        return {name: (float(cm[i, i]) / float(support[i]) if support[i] else None)
                for i, name in enumerate(class_names)}

    def macro_f1(self) -> float:
        """F1 averaged over the classes present in the split (true or predicted), as scikit-learn's
        f1_score(average="macro") with zero_division=0."""
        cm = self.confusion().double()
        tp = cm.diag()
        support, predicted = cm.sum(1), cm.sum(0)
        present = (support + predicted) > 0
        f1 = torch.where(support + predicted > 0, 2 * tp / (support + predicted).clamp_min(1), torch.zeros_like(tp))
        return float(f1[present].mean()) if bool(present.any()) else 0.0


@torch.no_grad()
def evaluate(module: "nn.Module", data: "TrainingData", split: "Split", *, scaled: bool = False,
             device: torch.device | None = None) -> Evaluation:
    """Run `module` (eval mode) over every row of `split`.

    Args:
        module: the head.
        data: where the rows come from (in memory or streamed).
        split: the split.
        scaled: feed features divided by `data.scale` (a head still being trained) instead of raw ones.
        device: where the head runs.

    Returns:
        The `Evaluation`.
    """
    was_training = module.training
    module.eval()
    predictions, losses = [], []
    for x, y in data.batches(split, EVAL_BATCH, shuffle=False, device=device, scaled=scaled):
        logits = module(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="sum"))
        predictions.append(logits.argmax(1).cpu())
    module.train(was_training)
    pred = torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.int64)
    labels = split.labels
    n = max(1, labels.numel())
    return Evaluation(split.name, float((pred == labels).double().mean()) if labels.numel() else 0.0,
                      float(torch.stack(losses).sum()) / n if losses else 0.0, pred, labels, data.num_classes)
