"""What `te compare` finds: one `Entry` per backbone and the `Comparison` that ranks them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from transfer_engine.compare.ranking import Verdict, kendall_tau


@dataclass
class Entry:
    """One backbone's row. Accuracies are fractions; None where not measured (--quick, or an error)."""

    backbone: str
    weights: str
    space: str | None = None
    images: int = 0  # the data set's records when it was scored (probes are reused only for the same)
    feature_dim: int | None = None
    parameters: int | None = None
    logme: float | None = None
    linear_val: float | None = None
    linear_test: float | None = None
    val_images: int | None = None  # the val split the probes were selected and scored on
    knn_val: float | None = None
    knn_test: float | None = None
    # k-fold selection: each probe's k-fold score over train+val (core.selection.CrossValidated.to_dict)
    linear_kfold: dict[str, Any] | None = None
    knn_kfold: dict[str, Any] | None = None
    extracted: int = 0
    reused: int = 0
    extract_images_per_second: float | None = None
    latency_ms_batch1: float | None = None          # PyTorch fp32, channels_last
    images_per_second_batch32: float | None = None
    ort_latency_ms_batch1: float | None = None      # onnxruntime fp32, the backbone's ONNX graph
    ort_images_per_second_batch32: float | None = None
    onnx_bytes: int | None = None                   # that graph's file: the fp32 model a user ships
    int8: dict[str, Any] | None = None              # with --int8: costs.int8_costs' figures
    costs_note: str | None = None                   # why a runtime's figures are missing
    probes_reused: bool = False
    runs: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def fp32_images_per_second(self) -> float:
        """The faster fp32 runtime's throughput at batch 32 (what the recommendation compares)."""
        return max(self.images_per_second_batch32 or 0.0, self.ort_images_per_second_batch32 or 0.0)

    @property
    def fp32_latency_ms(self) -> float | None:
        """The faster fp32 runtime's latency at batch 1 (the plot's x axis)."""
        found = [v for v in (self.latency_ms_batch1, self.ort_latency_ms_batch1) if v is not None]
        return min(found) if found else None

    @property
    def linear_accuracy(self) -> float | None:
        """The linear probe's score the ranking uses: k-fold when it was cross-validated, else val."""
        return self.linear_kfold["accuracy"] if self.linear_kfold else self.linear_val

    @property
    def rank_value(self) -> float:
        value = self.linear_accuracy if self.linear_accuracy is not None else self.logme
        return -math.inf if value is None else value


@dataclass
class Comparison:
    """The leaderboard: `entries` best first (failed backbones last), the recommendation, the files.

    `verdict` says which backbone leads, which ones the data cannot tell from it, and which one is
    recommended (`ranking.recommend`); `recommendation` is its sentence.
    """

    dataset: str
    data: str
    cache: str
    ranked_by: str
    entries: list[Entry]
    verdict: Verdict
    selected_by: str = "val"  # "kfold", "val" or "LogME" (--quick)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def recommendation(self) -> str:
        return self.verdict.text

    @property
    def logme_tau(self) -> float | None:
        """Kendall's tau between the LogME and the linear-probe rankings (None below 3 backbones): how far
        the no-training score could be trusted on this data."""
        pairs = [(e.logme, e.linear_accuracy) for e in self.entries
                 if e.error is None and e.logme is not None and e.linear_accuracy is not None]
        return kendall_tau([a for a, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 3 else None

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data": self.data, "cache": self.cache, "ranked_by": self.ranked_by,
                "selected_by": self.selected_by, "recommendation": self.recommendation,
                "recommended": self.verdict.chosen, "best": self.verdict.leader,
                "within_noise_of_best": list(self.verdict.tied), "logme_tau": self.logme_tau,
                "entries": [asdict(e) for e in self.entries], "files": self.files}
