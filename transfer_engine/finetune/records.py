"""The records of fine-tuning: typed and frozen in the code, plain dicts in the files te writes.

    EpochRecord       one finished epoch (metrics.json["epochs"], the checkpoint's history)
    Candidate         weights that can be kept: the start (epoch 0) or an epoch's, with what val said of them
    Trial             one run of a recipe search (metrics.json["search"]["trials"])
    FinetuneSummary   what `finetune()` returns and `te finetune --json` prints

`to_dict()` gives the very keys and values the JSON files and checkpoints hold; `from_dict()` reads them
back. This module imports nothing of te's: every other module of finetune/ may use it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class _Record:
    """to_dict/from_dict of a dataclass whose fields are plain JSON values."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        return cls(**data)


@dataclass(frozen=True)
class EpochRecord(_Record):
    """One finished epoch of training.

    Attributes:
        epoch: its number, from 1.
        train_loss, train_accuracy: over its (augmented) training batches.
        val_loss, val_accuracy: of the weights at its end (None: no val split).
        lr: the learning rate of the head and of the last and first backbone block at its end.
        trainable_backbone_blocks: how many backbone blocks the strategy trained in it.
        seconds: training time of the run so far, over all sessions.
    """

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: dict[str, float]
    trainable_backbone_blocks: int
    seconds: float


@dataclass(frozen=True)
class Candidate(_Record):
    """Weights a run can keep, and what val said of them (None: not measured, or not to be trusted).

    Attributes:
        epoch: 0 for the starting weights, else the epoch whose end they are.
        val_accuracy, val_loss: on val (`selection.better_on_val` compares candidates by them).
    """

    epoch: int
    val_accuracy: float | None
    val_loss: float | None

    @classmethod
    def of(cls, record: EpochRecord) -> "Candidate":
        return cls(record.epoch, record.val_accuracy, record.val_loss)


@dataclass(frozen=True)
class Trial(_Record):
    """One trial of a recipe search, as printed and recorded in metrics.json["search"]["trials"].

    Attributes:
        name: e.g. "lr0.0003-e1".
        lr: its peak learning rate.
        epochs: the epochs it was given.
        status: "done", "stopped early" (patience), "reused" (from an interrupted search), or
            "skipped: ..." (did not fit the budget; nothing below is set then).
        best_epoch: the epoch it kept (0: the start beat every epoch).
        epochs_run: the epochs it trained.
        val_accuracy, test_accuracy: of the weights it kept.
        seconds: its wall clock (set-up, training, evaluation).
        train_seconds: of which training steps.
        val_loss: of the weights it kept (breaks ties of val accuracy between trials).
    """

    name: str
    lr: float
    epochs: int
    status: str
    best_epoch: int | None = None
    epochs_run: int = 0
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0
    val_loss: float | None = None

    @property
    def ran(self) -> bool:
        return not self.status.startswith("skipped")


@dataclass(frozen=True)
class FinetuneSummary(_Record):
    """What `te finetune --json` prints (train/val/test_accuracy are the keys other tools rely on).

    `before` holds the starting model's accuracies through the same image pipeline, `parent` the --from
    run's own metrics (accuracies on cached features), so both comparisons are at hand.
    """

    out: str
    train_accuracy: float
    val_accuracy: float | None
    test_accuracy: float | None
    before: dict
    parent: dict | None
    best_epoch: int
    epochs: int
    strategy: str
    backbone: str
    head: str
    input_size: int
    precision: str
    device: str
    world_size: int
    resumed: bool
    seconds: float
    images_per_second: float
    history: list = field(default_factory=list)  # metrics.json["epochs"]: EpochRecord.to_dict() each
    stopped_early: bool = False  # --patience ended training before its last epoch
    start_candidate: bool = True  # False: the start's head saw val (te train --sweep), so it could not be kept
    search: dict | None = None   # a recipe search: its trials and what it chose (finetune/search.py)
    val_loss: float | None = None  # of the kept weights (breaks ties of val accuracy: selection.better_on_val)
