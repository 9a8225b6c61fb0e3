"""`te train`'s config: which cached features, which head(s), how to fit them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option
from transfer_engine.core.selection import check_folds
from transfer_engine.errors import UsageError

ALL_HEADS = "all"  # te train --head all: every installed head, and a leaderboard


@dataclass(frozen=True)
class TrainConfig(Config):
    """What `te train` is asked to do; each field's help says what it means (`te train --help`).

    `head` "all" fits every installed head (`train_all`); `memory_budget` is in bytes here and in GiB on
    the command line.
    """

    cache: str = option(help="Feature cache directory (filled by te extract).", flag="--cache", metavar="DIR",
                        required=True)
    head: str = option("linear", help="Head name (te heads: linear, mlp, cosine, knn, plugins), or 'all' for a "
                                      "leaderboard.", metavar="HEAD", required=True)
    dataset: str | None = shared.cached_dataset()
    backbone: str | None = shared.feature_backbone()
    space: str | None = shared.feature_space()
    epochs: int | None = option(None, help="Passes of minibatch training (default per head; L-BFGS and knn do not "
                                           "use it).", low=1, metavar="N")
    lr: float | None = option(None, help="Learning rate of minibatch training (default per head).", low=0,
                              low_open=True, metavar="X")
    weight_decay: float | None = option(None, help="L2 penalty on RMS-scaled features (linear: of the objective, "
                                                   "docs/train.md); AdamW decay for other heads.", low=0, metavar="X")
    sweep: bool = option(False, help="Choose weight decay (and lr, knn's k), coarse then refined, on val (the "
                                     "finalists by k-fold under --select); refit on train+val (--no-refit: not).")
    refit: bool = option(True, flag="--refit/--no-refit",
                         help="With --sweep: refit the chosen setting on train+val (default), or keep its fit on "
                              "train, so that val stays unseen: te export can then judge int8 on it, and te finetune "
                              "--from the run can keep its start.")
    select: str = shared.select("--sweep and --head all choose")
    folds: int = shared.folds()
    batch_size: int | None = option(None, help="Rows per minibatch (default 256).", low=1, metavar="N")
    options: Mapping[str, Any] = option(default_factory=dict, flag="--option", metavar="KEY=VALUE", parse="pairs",
                                        help="A head option, e.g. --option hidden=1024 (repeatable; te heads lists "
                                             "them).")
    device: str = shared.device()
    seed: int = option(0, help="Seeds initialization, dropout and batch order: the same seed repeats a run exactly "
                               "(CPU).")
    memory_budget: int | None = option(None, parse="gib", low=0, low_open=True, metavar="GB", changes_run=False,
                                       help="GiB of float32 features to hold in memory (default: a quarter of RAM); "
                                            "beyond it they stream from the cache.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", str(self.cache))
        object.__setattr__(self, "options", dict(self.options or {}))
        if self.sweep and self.weight_decay is not None:
            raise UsageError("--weight-decay and --sweep exclude each other: the sweep chooses the weight decay")
        if self.head == ALL_HEADS and self.options:
            raise UsageError("head options apply to one head; with --head all every head uses its defaults")
        check_folds(self.folds)  # its own wording: why one fold cannot cross-validate
        self.check()

    @property
    def every_head(self) -> bool:
        return self.head == ALL_HEADS
