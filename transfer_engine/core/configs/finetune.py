"""`te finetune`'s config: which start, which recipe, how to train (no torch).

The recipe constants live beside it: the CLI's help names them, the runs use them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

from transfer_engine.core.choices import AUGMENTS, FINETUNE_PRECISIONS, KEEP, LORA_TARGETS, OPTIMIZERS, RECIPES, STRATEGIES
from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.configs.export import DEFAULT_INT8_TARGET
from transfer_engine.core.options import option
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


@dataclass(frozen=True)
class FinetuneConfig(Config):
    """What `te finetune` is asked to do: either `from_run_dir` or `backbone` + `data` + `head`.

    Each field's help says what it means (`te finetune --help`). A field left None takes the recipe's
    value (`FIXED_SETTINGS`, `SCHEDULE_SETTINGS`); `head_options` (a new head's build options) is for
    Python callers only. `changes_run=False` marks what only says how the work is done: a checkpoint made
    under another value still resumes.
    """

    from_run_dir: str | None = option(None, flag="--from", metavar="RUN",
                                      help="A `te train` run: its backbone, weights, preprocessing, head, data set and "
                                           "splits (LP-FT).")
    backbone: str | None = option(None, metavar="NAME",
                                  help="Instead of --from: a backbone (`te backbones`), with --data, --head.")
    data: str | None = option(None, metavar="SRC",
                              help="With --backbone: image folder, .csv/.jsonl manifest or builtin:digits.")
    head: str | None = option(None, metavar="HEAD", help="With --backbone: a new head (`te heads`), e.g. linear.")
    weights: str = option("DEFAULT", metavar="W",
                          help="With --backbone: weights name, 'none' (random init, seeded) or a local state-dict "
                               "path.")
    head_options: Mapping[str, Any] = option(default_factory=dict, cli=False,
                                             help="Build options of the new head (with --head).")
    recipe: str = option("auto", choices=RECIPES, changes_run=False,
                         help=f"schedule: one run of up to {SCHEDULE_EPOCHS} epochs (--epochs) at peak lr "
                              f"{SCHEDULE_LR:g}, as many as --budget fits, keeping the last epoch unless the start is "
                              "better on val; search: a run per peak learning rate (3e-4, 1e-4, 3e-5 in turn) within "
                              "--budget, keeping what did best on val (the start included); fixed: --epochs at --lr "
                              "once; auto: the schedule unless --epochs or --lr is given.")
    budget_minutes: float = option(10.0, flag="--budget", low=0, low_open=True, metavar="MINUTES", changes_run=False,
                                   help="Wall-clock bound of the schedule or the search (its cost is timed before "
                                        "training).")
    epochs: int | None = option(None, low=1, metavar="N",
                                help=f"Epochs to train [fixed recipe: {FIXED_EPOCHS}; schedule and search: the most a "
                                     "run takes].")
    lr: float | None = option(None, low=0, low_open=True, metavar="X",
                              help=f"Peak learning rate of the head [fixed recipe: {FIXED_LR:g}; schedule: "
                                   f"{SCHEDULE_LR:g}; search: searched]; backbone blocks get X * layer-decay ** "
                                   "depth-from-top.")
    patience: int = option(0, low=0, metavar="N",
                           help="Stop when val (accuracy, then loss) has not improved on the best trained epoch for N "
                                "epochs (0: never; a search's trials use 2).")
    strategy: str | None = option(None, choices=STRATEGIES,
                                  help="What trains when [default: no_freeze with --from (LP-FT), freeze_unfreeze with "
                                       "--head].")
    unfreeze_epoch: int = option(1, low=0, metavar="K",
                                 help="freeze_unfreeze: epochs of head-only training before the whole backbone trains.")
    milestones: tuple[int, ...] = option((), metavar="E1,E2,...",
                                         help="unfreeze_milestones: after E1 epochs the top group of backbone blocks "
                                              "trains, after E2 the next, ... (as many groups as milestones).")
    lora_rank: int = option(8, low=1, metavar="R", help="lora: rank of each adapter.")
    lora_alpha: float = option(16.0, low=0, low_open=True, metavar="A",
                               help="lora: adapter scale numerator (each update is scaled by A / R).")
    lora_targets: tuple[str, ...] = option(LORA_TARGETS, choices=LORA_TARGETS, metavar="T1,T2",
                                           help="lora: which linear layers get adapters: qkv (attention input "
                                                "projections), proj (attention output), mlp.")
    layer_decay: float = option(0.9, low=0, high=1, low_open=True, metavar="D",
                                help="Learning-rate factor per backbone block, from the top (1 = same rate "
                                     "everywhere).")
    freeze_bn: bool = option(True, flag="--freeze-bn/--train-bn",
                             help="Keep BatchNorm running statistics frozen in trainable blocks too, or let them follow "
                                  "the new data (frozen blocks never update them).")
    backbone_dropout: bool = option(False, flag="--backbone-dropout/--no-backbone-dropout",
                                    help="Dropout and stochastic depth inside the backbone while training (off: with "
                                         "frozen BatchNorm statistics the backbone computes what te extract computed, "
                                         "so the --from head fits it).")
    optimizer: str = option("adamw", choices=OPTIMIZERS,
                            help="AdamW (decoupled weight decay) or SGD (Nesterov momentum 0.9).")
    weight_decay: float | None = option(None, low=0, metavar="X",
                                        help="Weight decay of weights (not of biases and norm layers) [schedule: "
                                             f"{SCHEDULE_SETTINGS['weight_decay']:g}; otherwise "
                                             f"{FIXED_SETTINGS['weight_decay']:g}].")
    warmup: float = option(0.1, low=0, high=1, metavar="F",
                           help="Fraction of the steps with a linear warmup; cosine decay after it.")
    clip_grad: float = option(1.0, low=0, metavar="X", help="Clip the global gradient norm to X (0: no clipping).")
    label_smoothing: float | None = option(None, low=0, high=1, high_open=True, metavar="X",
                                           help="Cross-entropy label smoothing [schedule: "
                                                f"{SCHEDULE_SETTINGS['label_smoothing']:g}; otherwise "
                                                f"{FIXED_SETTINGS['label_smoothing']:g}].")
    batch_size: int = option(32, low=1, metavar="N", help="Images per optimizer step, over all processes.")
    input_size: int | None = option(None, low=16, metavar="N",
                                    help="Train at NxN pixels instead of the weights' size (recorded: export and "
                                         "predict use it).")
    augment: str = option("crop+flip", choices=AUGMENTS,
                          help="Training augmentation: random resized crop (and horizontal flip); none for tiny images "
                               "such as the 8x8 digits.")
    crop_scale: float | None = option(None, low=0, high=1, low_open=True, metavar="F",
                                      help="Smallest area fraction of the random resized crop [schedule: "
                                           f"{SCHEDULE_SETTINGS['crop_scale']:g}; otherwise "
                                           f"{FIXED_SETTINGS['crop_scale']:g}].")
    precision: str = option("auto", choices=FINETUNE_PRECISIONS,
                            help="Autocast precision; auto = bf16 where the GPU or CPU has it natively (fp16 + loss "
                                 "scaling on older GPUs), fp32 otherwise.")
    device: str = shared.device()
    channels_last: bool = option(True, flag="--channels-last/--no-channels-last",
                                 help="NHWC memory layout for convolutions (faster on CPUs and tensor cores).")
    seed: int = option(0, help="Seed of the data order, augmentations, dropout and a new head.")
    workers: int | None = option(None, low=0, metavar="N", changes_run=False,
                                 help="Image decoding processes per process (default: 0 on machines with few cores).")
    limit: int | None = shared.limit()
    checkpoint_every: int = option(0, low=0, metavar="N",
                                   help="Also checkpoint every N steps within an epoch (0: at the end of each epoch "
                                        "only).")
    keep: str | None = option(None, choices=KEEP,
                              help="Weights to write: final = the last epoch's unless the start is better on val [the "
                                   "schedule's]; best = the best epoch on val, the start included [otherwise]; last = "
                                   "the last epoch's.")
    qat: bool = option(False, flag="--qat/--no-qat",
                       help="Quantization-aware fine-tuning: train the int8 model onnxruntime runs (BatchNorm folded, "
                            "activations at onnxruntime's calibrated scales, weights and biases on their int8 grids, "
                            "in fp32); te export RUN --quantize int8 then writes exactly that model.")
    int8_target: str = shared.int8_target(DEFAULT_INT8_TARGET)
    no_val: bool = option(False, help="When the data has no val split, train on all of train and keep the last epoch "
                                      "(by default te holds out the val te train held out, 15% of each class, and "
                                      "selects on it).")

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
        if self.qat and self.strategy == "lora":
            raise UsageError("--qat trains every weight on its int8 grid; it does not combine with --strategy lora")
        if self.qat and not self.freeze_bn:
            raise UsageError("--qat folds BatchNorm into the convolutions, as onnxruntime does: it needs --freeze-bn")
        if self.qat and self.precision not in ("auto", "fp32"):
            raise UsageError(f"--qat simulates onnxruntime's int8 arithmetic in fp32; --precision {self.precision} "
                             "cannot be used with it")
        if self.int8_target != self.default("int8_target") and not self.qat:
            raise UsageError("--int8-target applies to --qat (te export takes its own)")
        lora = ("lora_rank", "lora_alpha", "lora_targets")
        if self.strategy != "lora" and any(getattr(self, f) != self.default(f) for f in lora):
            raise UsageError("--lora-rank, --lora-alpha and --lora-targets apply to --strategy lora")
        self.check()

    @property
    def searches(self) -> bool:
        """Whether this config asks for a recipe search (see `recipe`)."""
        return self.recipe in ("search", "schedule") or (self.recipe == "auto" and self.epochs is None and self.lr is None)

    def fixed(self, **changes: Any) -> "FinetuneConfig":
        """This config as one fixed recipe (the defaults filled in where epochs or lr is missing)."""
        unset = {k: v for k, v in FIXED_SETTINGS.items() if getattr(self, k) is None}
        changes = {"epochs": self.epochs or FIXED_EPOCHS, "lr": self.lr or FIXED_LR, **unset, **changes}
        return replace(self, recipe="fixed", **changes)
