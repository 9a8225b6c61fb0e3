"""Typed, frozen run configurations (no torch): built once (from the CLI, or from keywords in Python),
validated in `__post_init__`, passed whole. Defaults live here and nowhere else: the CLI reads its
defaults from the configs' fields (`TrainConfig` for te train, `FinetuneConfig` for te finetune).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from transfer_engine.core.choices import AUGMENTS, DEVICES, FINETUNE_PRECISIONS, KEEP, LORA_TARGETS, OPTIMIZERS, RECIPES, STRATEGIES
from transfer_engine.core.selection import DEFAULT_FOLDS, DEFAULT_SELECT, check_folds, check_select
from transfer_engine.errors import UsageError

CROP_SCALE = 0.35  # smallest area fraction of a random resized crop; timm's 0.08 is for training from scratch
# A fixed recipe's epochs and peak lr when one of them is given and the other is not (the search's own
# grid lives in finetune/search.py).
FIXED_EPOCHS = 2
FIXED_LR = 3e-4
# What a fixed recipe (and each trial of a search) uses where the config leaves these None; the schedule
# recipe has its own (finetune/search.py: SCHEDULE_SETTINGS), so None means "the recipe's".
FIXED_SETTINGS = {"weight_decay": 0.01, "label_smoothing": 0.0, "crop_scale": CROP_SCALE, "keep": "best"}
# The schedule recipe (the default): one run at SCHEDULE_LR of as many epochs as the budget fits, up to
# SCHEDULE_EPOCHS, with SCHEDULE_SETTINGS where the config leaves them None; the start and the last epoch
# are its only candidates (keep "final"). Why each value: docs/finetune.md, "The recipe".
SCHEDULE_LR = 1e-3
SCHEDULE_EPOCHS = 8
SCHEDULE_SETTINGS = {"weight_decay": 0.05, "label_smoothing": 0.1, "crop_scale": 0.6, "keep": "final"}


ALL_HEADS = "all"  # te train --head all: every installed head, and a leaderboard


class _Defaults:
    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field `name` (what the CLI shows)."""
        for f in fields(cls):
            if f.name == name:
                return f.default
        raise KeyError(name)


@dataclass(frozen=True)
class TrainConfig(_Defaults):
    """What `te train` is asked to do: which cached features, which head(s), how to fit them.

    Attributes:
        cache: the feature cache directory (`te extract --cache DIR`).
        head: a head name (`te heads`), or "all" for every installed head (`train_all`).
        dataset: the data set in the cache (None: its only one).
        backbone: use this backbone's space (None: the one space holding the data set).
        space: a space id or prefix (`te cache info`), when several spaces hold the data set.
        epochs: passes of minibatch training (None: per head).
        lr: learning rate of minibatch training (None: per head).
        weight_decay: L2 penalty / AdamW weight decay (None: per head); not with `sweep`.
        sweep: search weight decay (and lr, and the head's declared options) on val, then refit on
            train+val.
        batch_size: rows per minibatch (None: 256).
        options: the head's build options, e.g. {"hidden": 1024} for mlp (not with "all").
        device: "auto", "cpu" or "cuda".
        seed: seeds initialization, dropout and minibatch order; the same seed gives the same run.
        memory_budget: bytes of float32 features to hold in memory (None: a quarter of RAM); beyond it,
            features stream from the cache through the gather loader.
        select: how a choice is made (a sweep's setting, the best of several heads): "kfold" (stratified
            k-fold cross-validation over train+val), "val" (the val split), or "auto": kfold when
            train+val is small (`core.selection.KFOLD_MAX_RECORDS`), else val.
        folds: k of k-fold selection.
    """

    cache: str
    head: str = "linear"
    dataset: str | None = None
    backbone: str | None = None
    space: str | None = None
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    sweep: bool = False
    batch_size: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    device: str = "auto"
    seed: int = 0
    memory_budget: int | None = None
    select: str = DEFAULT_SELECT
    folds: int = DEFAULT_FOLDS

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", str(self.cache))
        object.__setattr__(self, "options", dict(self.options or {}))
        if self.sweep and self.weight_decay is not None:
            raise UsageError("--weight-decay and --sweep exclude each other: the sweep chooses the weight decay")
        if self.head == ALL_HEADS and self.options:
            raise UsageError("head options apply to one head; with --head all every head uses its defaults")
        for name, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size)):
            if value is not None and value < 1:
                raise UsageError(f"{name} must be at least 1, got {value}")
        for name, value in (("--lr", self.lr), ("--memory-budget", self.memory_budget)):
            if value is not None and not value > 0:
                raise UsageError(f"{name} must be positive, got {value}")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise UsageError(f"--weight-decay must be at least 0, got {self.weight_decay}")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        check_select(self.select)
        check_folds(self.folds)

    @property
    def every_head(self) -> bool:
        return self.head == ALL_HEADS


@dataclass(frozen=True)
class FinetuneConfig(_Defaults):
    """What `te finetune` is asked to do: either `from_run_dir` or `backbone` + `data` + `head`.

    Attributes:
        from_run_dir: a `te train` run: its backbone, weights, preprocessing, head, data set and splits.
        backbone, data, head: instead of from_run_dir: a backbone, a --data source and a new head.
        weights: the backbone's weights (with `backbone`).
        head_options: options of the new head (with `head`).
        recipe: "schedule" trains one run of as many epochs as `budget_minutes` fits (up to `epochs`)
            with the schedule's settings, and keeps its last epoch unless the start is better on val;
            "search" trains one run per peak learning rate (highest first) within `budget_minutes`, and
            keeps whatever did best on val, the start included (both: finetune/search.py); "fixed" trains
            `epochs` at `lr` once; "auto" (the default) is the schedule when neither `epochs` nor `lr` is
            given and that fixed recipe otherwise.
        budget_minutes: wall-clock bound of a search (trials that would not fit are skipped).
        epochs: epochs to train (a fixed recipe: default 2; a search: the most a trial may take).
        lr: peak learning rate of the head (backbone blocks: lr * layer_decay ** depth-from-top); a fixed
            recipe's default is 3e-4; given to a search, only the run length is searched.
        patience: stop when val (accuracy, then loss) has not improved on the best trained epoch for this
            many epochs (0: never; a search's trials use 2); the best epoch is kept either way.
        strategy: "freeze", "no_freeze", "freeze_unfreeze", "unfreeze_milestones" or "lora"; default no_freeze
            from a trained head (LP-FT), freeze_unfreeze with a new head.
        lora_rank, lora_alpha, lora_targets: "lora": the adapters' rank, their scale numerator (updates are
            alpha / rank * B @ A) and which linear layers get them (`LORA_TARGETS`; finetune/lora.py).
        unfreeze_epoch: head-only epochs of freeze_unfreeze.
        milestones: epochs at which unfreeze_milestones unfreezes each next group, from the top.
        layer_decay: per-block learning-rate factor (1 = one rate everywhere).
        freeze_bn: keep BatchNorm running statistics frozen in trainable blocks too (the default: batch
            statistics of small batches of a new domain wreck a pretrained network's features; see
            docs/finetune.md); False lets them follow the new data.
        backbone_dropout: keep the backbone's dropout and stochastic depth on while training (off by
            default under freeze_bn: the backbone then computes exactly what te extract computed, and the
            warm-started head fits it; with them on, drop-connect alone moves the features enough to
            wreck the head's loss before any update, see docs/finetune.md).
        optimizer: "adamw" or "sgd".
        weight_decay, warmup, clip_grad, label_smoothing: see `OptimConfig`.
        batch_size: images per optimizer step, over all DDP ranks.
        input_size: train (and record for export) at this input size instead of the weights' own.
        augment: "crop+flip", "crop" or "none".
        crop_scale: smallest area fraction of the random resized crop.
        precision: "auto", "fp32", "bf16" or "fp16".
        device: "auto", "cpu" or "cuda".
        channels_last: NHWC memory layout for convolutions.
        seed: seed of the data order, augmentations, dropout and a new head.
        workers: image decoding processes per rank (default: 0 on small machines).
        limit: use only the first N images of the data set.
        checkpoint_every: also checkpoint every N steps within an epoch (0: at epoch ends only).
        keep: "final" (the last epoch, or the start when it is better on val), "best" (highest val accuracy,
            the starting model included unless its head was fitted on
            train+val) or "last" weights.
        no_val: when the data has no val split, train on all of train and keep the last epoch instead of
            holding out te train's val (`core.splits.hold_out`); without it, no val at all is an error.
    """

    from_run_dir: str | None = None
    backbone: str | None = None
    data: str | None = None
    head: str | None = None
    weights: str = "DEFAULT"
    head_options: Mapping[str, Any] = field(default_factory=dict)
    recipe: str = "auto"
    budget_minutes: float = 10.0
    epochs: int | None = None
    lr: float | None = None
    patience: int = 0
    strategy: str | None = None  # None: no_freeze from a trained head (LP-FT), freeze_unfreeze with a new one
    unfreeze_epoch: int = 1
    milestones: tuple[int, ...] = ()
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    layer_decay: float = 0.9
    freeze_bn: bool = True
    backbone_dropout: bool = False
    optimizer: str = "adamw"
    weight_decay: float | None = None  # None: the recipe's (FIXED_SETTINGS, or the schedule's)
    warmup: float = 0.1
    clip_grad: float = 1.0
    label_smoothing: float | None = None  # None: the recipe's
    batch_size: int = 32
    input_size: int | None = None
    augment: str = "crop+flip"
    crop_scale: float | None = None  # None: the recipe's
    precision: str = "auto"
    device: str = "auto"
    channels_last: bool = True
    seed: int = 0
    workers: int | None = None
    limit: int | None = None
    checkpoint_every: int = 0
    keep: str | None = None  # None: the recipe's ("final" for the schedule, "best" otherwise)
    no_val: bool = False

    def __post_init__(self) -> None:
        if self.from_run_dir is not None:
            object.__setattr__(self, "from_run_dir", str(self.from_run_dir))
        object.__setattr__(self, "milestones", tuple(self.milestones))
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        object.__setattr__(self, "head_options", dict(self.head_options or {}))
        if (self.from_run_dir is None) == (self.backbone is None):
            raise UsageError("give either --from RUN or --backbone NAME --data SRC --head HEAD")
        if self.backbone is not None and (not self.data or not self.head):
            raise UsageError("--backbone needs --data SRC and --head HEAD (or use --from RUN)")
        for name, value, low in (("--epochs", 1 if self.epochs is None else self.epochs, 1), ("--batch-size", self.batch_size, 1),
                                 ("--patience", self.patience, 0),
                                 ("--unfreeze-epoch", self.unfreeze_epoch, 0),
                                 ("--checkpoint-every", self.checkpoint_every, 0)):
            if value < low:
                raise UsageError(f"{name} must be at least {low}, got {value}")
        lora = ("lora_rank", "lora_alpha", "lora_targets")
        if self.strategy != "lora" and any(getattr(self, f) != self.default(f) for f in lora):
            raise UsageError("--lora-rank, --lora-alpha and --lora-targets apply to --strategy lora")
        if self.lora_rank < 1 or not self.lora_alpha > 0:
            raise UsageError(f"--lora-rank must be at least 1 and --lora-alpha positive, got {self.lora_rank} and "
                             f"{self.lora_alpha}")
        if not self.lora_targets or any(t not in LORA_TARGETS for t in self.lora_targets):
            raise UsageError(f"--lora-targets must be one or more of {','.join(LORA_TARGETS)}, got "
                             f"{','.join(self.lora_targets)!r}")
        if self.lr is not None and self.lr <= 0:
            raise UsageError(f"--lr must be positive, got {self.lr}")
        if not self.budget_minutes > 0:
            raise UsageError(f"--budget must be a positive number of minutes, got {self.budget_minutes}")
        for option, value, allowed in (("--recipe", self.recipe, RECIPES), ("--keep", self.keep, (None, *KEEP)), ("--augment", self.augment, AUGMENTS),
                                       ("--optimizer", self.optimizer, OPTIMIZERS),
                                       ("--precision", self.precision, FINETUNE_PRECISIONS),
                                       ("--device", self.device, DEVICES),
                                       ("--strategy", self.strategy, (None, *STRATEGIES))):
            if value not in allowed:
                shown = ", ".join(a for a in allowed if a is not None)
                raise UsageError(f"{option} must be one of {shown}, got {value!r}")

    @property
    def searches(self) -> bool:
        """Whether this config asks for a recipe search (see `recipe`)."""
        return self.recipe in ("search", "schedule") or (self.recipe == "auto" and self.epochs is None and self.lr is None)

    def fixed(self, **changes: Any) -> "FinetuneConfig":
        """This config as one fixed recipe (the defaults filled in where epochs or lr is missing)."""
        unset = {k: v for k, v in FIXED_SETTINGS.items() if getattr(self, k) is None}
        changes = {"epochs": self.epochs or FIXED_EPOCHS, "lr": self.lr or FIXED_LR, **unset, **changes}
        return replace(self, recipe="fixed", **changes)
