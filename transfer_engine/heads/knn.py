"""The k-nearest-neighbour head: the training features themselves, voted on by cosine similarity.

Nothing is learned by gradient steps: `fit_knn` stores the L2-normalized training features and their
labels as buffers. A query's logits are the log of the weighted votes of its k most similar stored
features, each weighted by softmax(similarity / temperature) over the k (as in DINO's k-NN evaluation),
so softmax(logits) is the vote distribution and argmax is the majority of the weighted votes.

The buffers' length is the number of training rows, which `create_head` cannot know: loading a state
dict resizes them (see `_load_from_state_dict`), so `create_head("knn", D, C).load_state_dict(saved)`
restores a fitted head. The forward pass is matmul, topk, softmax, gather and scatter-add: all of it
exports to ONNX.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Log of a class that got no vote: finite (so ONNX and argmax behave), far below any voted class.
_NO_VOTE = 1e-12


class KNNClassifier(nn.Module):
    """Cosine k-NN over stored features.

    Args:
        in_features: feature length.
        num_classes: number of classes.
        k: neighbours that vote (fewer when fewer rows are stored).
        temperature: softmax temperature of the similarity weights (small: the nearest dominate).

    Buffers:
        bank: float32 [N, in_features], the L2-normalized training features.
        bank_labels: int64 [N], their labels.
    """

    def __init__(self, in_features: int, num_classes: int, k: int = 20, temperature: float = 0.07) -> None:
        super().__init__()
        if int(k) < 1:
            raise ValueError(f"knn: k must be >= 1, got {k}")
        if not temperature > 0:
            raise ValueError(f"knn: temperature must be > 0, got {temperature}")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.k = int(k)
        self.temperature = float(temperature)
        self.register_buffer("bank", torch.zeros(0, self.in_features))
        self.register_buffer("bank_labels", torch.zeros(0, dtype=torch.int64))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, k={self.k}, "
                f"temperature={self.temperature}, stored={self.bank.shape[0]}")

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Store `features` [N, in_features] (normalized here) and `labels` [N] as the neighbours."""
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(f"knn: features must be [N, {self.in_features}], got {list(features.shape)}")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"knn: need one label per feature row, got {list(labels.shape)}")
        if features.shape[0] == 0:
            raise ValueError("knn: cannot fit on zero rows")
        device = self.bank.device
        self.bank = F.normalize(features.to(device=device, dtype=torch.float32), dim=1).contiguous()
        self.bank_labels = labels.to(device=device, dtype=torch.int64).contiguous()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.bank.shape[0] == 0:
            raise RuntimeError("knn head is not fitted: it stores no features (fit it, or load a state dict)")
        k = min(self.k, int(self.bank.shape[0]))
        similarity = F.normalize(features, dim=1) @ self.bank.t()
        top, index = similarity.topk(k, dim=1)
        weights = torch.softmax(top / self.temperature, dim=1)
        votes = torch.zeros(features.shape[0], self.num_classes, dtype=weights.dtype, device=weights.device)
        votes = votes.scatter_add(1, self.bank_labels[index], weights)
        return torch.log(votes.clamp_min(_NO_VOTE))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # The stored rows' count is known only from the saved tensors: take their shape before the
        # default loader copies values (it refuses a shape mismatch). A wrong feature length is still
        # refused by the default loader, since only the row count is adopted here.
        bank = state_dict.get(prefix + "bank")
        labels = state_dict.get(prefix + "bank_labels")
        if isinstance(bank, torch.Tensor) and bank.dim() == 2 and bank.shape[1] == self.in_features:
            self.bank = torch.empty(bank.shape, dtype=self.bank.dtype, device=self.bank.device)
        if isinstance(labels, torch.Tensor) and labels.dim() == 1:
            self.bank_labels = torch.empty(labels.shape, dtype=self.bank_labels.dtype, device=self.bank_labels.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def fit_knn(module: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> None:
    """The `HeadSpec.fit` of the knn head: store the training rows."""
    module.fit(features, labels)
