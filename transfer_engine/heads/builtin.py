"""te's built-in heads, registered through the `transfer_engine.heads` entry point `builtin`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transfer_engine.heads.knn import KNNClassifier, fit_knn
from transfer_engine.heads.spec import HeadSpec, Option


def _linear(in_features: int, num_classes: int) -> nn.Module:
    return nn.Linear(in_features, num_classes)


def _mlp(in_features: int, num_classes: int, hidden: int = 512, dropout: float = 0.2) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class CosineClassifier(nn.Module):
    """Logits are cosine similarities between the feature and one prototype per class, times a
    learned temperature (as in cosine-softmax few-shot classifiers). Robust to feature scale."""

    def __init__(self, in_features: int, num_classes: int, init_scale: float = 10.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.prototypes, std=1.0 / math.sqrt(in_features))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(features, dim=1) @ F.normalize(self.prototypes, dim=1).t()
        return cos * self.log_scale.exp()


def heads() -> list[HeadSpec]:
    """The entry point."""
    # train_defaults were chosen on real efficientnet_lite0 features of builtin:digits and the
    # Gaussian mixture of benchmarks/bench_train.py; --sweep searches around them.
    return [
        HeadSpec("linear", _linear, description="multinomial logistic regression (one Linear layer)",
                 solver="lbfgs", train_defaults={"weight_decay": 1e-4, "lr": 1e-2, "epochs": 30}),
        HeadSpec("mlp", _mlp, options={"hidden": Option(512, int, min=1), "dropout": Option(0.2, float, min=0, max=1, max_open=True)},
                 description="one hidden layer (GELU, dropout), then Linear",
                 train_defaults={"weight_decay": 1e-2, "lr": 1e-3, "epochs": 30}),
        HeadSpec("cosine", CosineClassifier, options={"init_scale": Option(10.0, float, min=0, min_open=True)},
                 description="cosine similarity to learned class prototypes, learned temperature",
                 input_scale="invariant",
                 train_defaults={"weight_decay": 1e-4, "lr": 3e-2, "epochs": 30}),
        HeadSpec("knn", KNNClassifier, options={"k": Option(20, int, min=1), "temperature": Option(0.07, float, min=0, min_open=True)},
                 trainable=False, fit=fit_knn, input_scale="invariant",
                 search={"k": (1, 3, 5, 10, 20, 50)},
                 description="k nearest training features by cosine similarity, weighted vote (no training)"),
    ]
