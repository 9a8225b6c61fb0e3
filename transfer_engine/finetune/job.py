"""A fine-tuning job: everything one fixed-recipe run needs before its first step, built from its config.

`build_job` resolves the config into a `Job` (device, precision, the starting model, the data sets, the
strategy, the trainer); `resume_settings` says what a checkpoint must match for `--resume` to continue it
(and what run.json records as the run's hyper-parameters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from transfer_engine.core import distributed as dist
from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.runtime import device_of_this_rank, resolve_device
from transfer_engine.core.splits import HOLDOUT_FRACTION, hold_out
from transfer_engine.errors import UsageError
from transfer_engine.finetune import data as fdata
from transfer_engine.finetune import lora
from transfer_engine.finetune import qat as fqat
from transfer_engine.finetune.loop import Trainer
from transfer_engine.finetune.precision import choose_precision
from transfer_engine.finetune.start import Start, from_backbone, from_run
from transfer_engine.finetune.strategies import Strategy, backbone_blocks, make_strategy
from transfer_engine.onnx.simulate import EXACT_BATCH

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Job:
    """One fine-tuning run, resolved: the config and everything built from it before training starts."""

    cfg: FinetuneConfig    # keep="last" where --no-val found no val split
    start: Start
    trainer: Trainer
    sets: dict[str, fdata.ImageSet]  # per split
    plan: Strategy
    strategy_name: str     # resolved from the config's (None: the default for the start, `strategy_name`)
    precision: str         # the precision chosen, and why
    precision_reason: str
    input_size: int        # the crop size the model sees
    val_note: str | None   # what te says about the val split (held out of train, or none with --no-val)
    ckpt_dir: Path
    rank: int
    world: int
    workers: int           # data-loading processes per rank
    adapters: lora.Adapters | None = None  # --strategy lora: merged into the backbone before the run is written
    qat: fqat.Qat | None = None  # --qat: the int8 simulation, taken out (weights left on their grids) before writing

    @property
    def eval_batch(self) -> int:
        if self.qat is not None and self.trainer.device.type == "cpu":
            return EXACT_BATCH  # evaluated in integers: small batches stay in the caches (`onnx.simulate`)
        return max(self.cfg.batch_size, 64)


def build_job(cfg: FinetuneConfig, ckpt_dir: Path) -> Job:
    """Everything a run of the fixed recipe `cfg` needs before its first step: device, precision, the
    starting model, the data, the strategy and the trainer (whose schedule spans `cfg.epochs`).

    Raises:
        UsageError: a batch size the processes or the training images cannot take, a bad --precision,
            no val split to select on (without --no-val), or the start's own errors.
    """
    rank, world = dist.rank_and_world()
    if cfg.batch_size % world:
        raise UsageError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    target = device_of_this_rank(resolve_device(cfg.device), world)
    chosen, precision_reason = ("fp32", fqat.PRECISION_REASON) if cfg.qat else choose_precision(cfg.precision, target)

    torch.manual_seed(cfg.seed)
    start = (from_run(cfg.from_run_dir, cfg.limit) if cfg.from_run_dir is not None else
             from_backbone(cfg.backbone, cfg.data, cfg.head, weights=cfg.weights, seed=cfg.seed,
                           head_options=cfg.head_options, limit=cfg.limit))
    torch.manual_seed(cfg.seed + rank)  # dropout masks differ between ranks, as their images do
    preprocess = fdata.scaled_preprocess(start.preprocess, cfg.input_size)
    cfg, sets, val_note = _data_sets(cfg, start, preprocess)
    name = strategy_name(cfg)
    adapters = (lora.attach(start.model.backbone, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets,
                            input_size=preprocess.crop_size, name=start.backbone.name) if name == "lora" else None)
    # --qat: installed before the trainer is built, so that its optimizer holds the parametrized weights
    quantized = fqat.prepare(start.model, sets["train"], cfg, preprocess.crop_size) if cfg.qat else None
    blocks = backbone_blocks(start.model.backbone)
    plan = make_strategy(name, len(blocks), unfreeze_epoch=cfg.unfreeze_epoch, milestones=cfg.milestones,
                         freeze_bn=cfg.freeze_bn, adapters=[b.has_adapters for b in blocks])
    steps = fdata.steps_per_epoch(len(sets["train"]), cfg.batch_size)
    trainer = Trainer(start.model, blocks, plan, cfg, len(start.class_names), cfg.epochs * steps, target, chosen)
    return Job(cfg, start, trainer, sets, plan, name, chosen, precision_reason, preprocess.crop_size, val_note,
               ckpt_dir, rank, world, _default_workers(world) if cfg.workers is None else cfg.workers, adapters,
               quantized)


def strategy_name(cfg: FinetuneConfig) -> str:
    """The strategy `cfg` trains with: its own, else no_freeze from a trained head (LP-FT), freeze_unfreeze
    with a new one."""
    return cfg.strategy or ("no_freeze" if cfg.from_run_dir is not None else "freeze_unfreeze")


def resume_settings(cfg: FinetuneConfig, job: Job) -> dict[str, Any]:
    """The settings that decide a run's trajectory: a checkpoint resumes only under the same ones (a changed
    run must not continue silently), and run.json records them as the run's hyper-parameters.

    They are derived, not listed: every field of `FinetuneConfig` declared `changes_run` (all but the ones
    that say how the work is done: recipe, budget, workers), then, under the same names, what `build_job`
    resolved from them, so that "auto" is recorded as what it chose. A new option is in them by default.

    Args:
        cfg: the run's config (`job.cfg`, a fixed recipe: every setting resolved).
        job: what was resolved: the start's backbone, weights, data and head, the strategy's name and
            head-only epochs, the crop size, the precision, the device type, the world size, the adapters.
    """
    start = job.start
    given = cfg.run_settings()
    given.pop("from_run_dir")  # recorded as an absolute path under "from"
    given.pop("device")  # recorded as what it resolved to, "device_type"
    resolved = {"from": str(Path(cfg.from_run_dir).absolute()) if cfg.from_run_dir is not None else None,
                "backbone": start.backbone.name, "weights": start.backbone.weights, "data": start.dataset["data"],
                "head": start.head.name, "head_options": start.head.options, "strategy": job.strategy_name,
                "start_epochs": job.plan.start_epochs, "input_size": job.input_size, "precision": job.precision,
                "device_type": job.trainer.device.type, "world_size": job.world,
                **(job.adapters.settings() if job.adapters is not None else {})}
    return {**given, **resolved}


def _data_sets(cfg: FinetuneConfig, start: Start, preprocess) -> tuple[FinetuneConfig, dict, str | None]:
    """The ImageSet of each split, the config (keep="last" where --no-val finds no val) and the val note."""
    splits = {s: [it for it in start.items if it.split == s] for s in SPLITS}
    splits, val_note = _validation_split(splits, cfg.no_val)
    if cfg.no_val and not splits["val"]:
        cfg = replace(cfg, keep="last")
    if len(splits["train"]) < cfg.batch_size:
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the {len(splits['train'])} training images; "
                         "lower it")
    sets = {s: fdata.ImageSet(start.source, items, preprocess, cfg.augment, cfg.crop_scale)
            for s, items in splits.items()}
    return cfg, sets, val_note


def _validation_split(splits: dict[str, list], no_val: bool) -> tuple[dict[str, list], str | None]:
    """The splits with a val to select on, and what te says about it (None: nothing to say).

    A data set without val (train/ + test/ folders) gets the one `te train` held out, by the same rule
    (`core.splits.hold_out`), so the epoch te finetune keeps is chosen on images neither head nor
    backbone trained on, and the start competes as te train's result did.

    Raises:
        UsageError: no val split and none can be held out (a class with a single image), without --no-val.
    """
    if splits["val"]:
        return splits, None
    train = splits["train"]
    if no_val:
        return splits, (f"finetune: --no-val: no val split; training on all {len(train)} train images and keeping "
                        "the last epoch (nothing is selected)")
    kept, held = hold_out(train)
    if not held:
        raise UsageError("the data has no val split and too few train images to hold some out (each class needs 2 "
                         "or more); add a val split, or pass --no-val to train without selection (keeps the last "
                         "epoch)")
    val = [replace(item, split="val") for item in held]
    note = (f"finetune: the data has no val split: holding out {len(val)} of its {len(train)} train images "
            f"({HOLDOUT_FRACTION:.0%} per class, by content key: the images te train holds out) to select on")
    return {**splits, "train": kept, "val": val}, note


def _default_workers(world: int) -> int:
    cpus = os.cpu_count() or 1
    per_rank = cpus // (2 * world)
    return min(4, per_rank) if per_rank > 1 else 0
