"""`finetune()`: train backbone and head end to end, from a `te train` run (LP-FT) or from scratch heads.

The order of work: check --out and the checkpoint directory (fail before any model work), build the
starting model and the data, evaluate the starting model ("before"), then train epoch by epoch:
strategy phase, optimizer steps, validation, best weights, checkpoint. At the end the kept weights are
evaluated on train/val/test and the run directory is written (staged, then renamed into place) and the
checkpoints are removed.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from transfer_engine.core.splits import HOLDOUT_FRACTION, hold_out
from transfer_engine.errors import UsageError
from transfer_engine.extract.pipeline import cpu_has_native_bf16
from transfer_engine.extract.runner import resolve_device
from transfer_engine.finetune import checkpoint as ckpt
from transfer_engine.finetune import data as fdata
from transfer_engine.finetune import distributed as dist
from transfer_engine.finetune.loop import EpochSums, OptimConfig, StepProgress, Trainer
from transfer_engine.finetune.start import Start, from_backbone, from_run
from transfer_engine.finetune.strategies import backbone_blocks, make_strategy
from transfer_engine.runs.format import FITTED_ON_TRAIN_VAL
from transfer_engine.runs.writer import check_out

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
KEEP = ("best", "last")


@dataclass
class FinetuneSummary:
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
    history: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """Resolve --precision: auto = bf16 autocast on GPUs that have it, fp32 elsewhere (why: see docs)."""
    if requested not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp16" and device.type != "cuda":
        raise UsageError("--precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        raise UsageError("--precision bf16: this CPU has no native bf16 instructions; use fp32")
    if requested != "auto":
        return requested, "asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: bf16 autocast (the GPU supports it; no loss scaling needed)"
        return "fp16", "auto: fp16 autocast with loss scaling (the GPU has no bf16)"
    # Measured on a Zen 4 core with native bf16 (one thread, channels_last, training steps): bf16 autocast
    # ran ResNet-18 1.7x faster than fp32 but EfficientNet-Lite0 0.5-0.9x (its depthwise convolutions have
    # no fast bf16 kernel), so it is not a safe default there; --precision bf16 asks for it.
    return "fp32", "auto: fp32 on CPU (bf16 autocast is slower for some backbones; try --precision bf16)"


def _default_workers(world: int) -> int:
    cpus = os.cpu_count() or 1
    per_rank = cpus // (2 * world)
    return min(4, per_rank) if per_rank > 1 else 0


def finetune(out: str | os.PathLike, *, from_run_dir: str | os.PathLike | None = None, backbone: str | None = None,
             data: str | None = None, head: str | None = None, weights: str = "DEFAULT",
             head_options: dict[str, Any] | None = None, epochs: int = 2, lr: float = 3e-4,
             strategy: str | None = None, unfreeze_epoch: int = 1, milestones: tuple[int, ...] = (),
             layer_decay: float = 0.9, freeze_bn: bool = True, optimizer: str = "adamw",
             weight_decay: float = 0.01, warmup: float = 0.1, clip_grad: float = 1.0,
             label_smoothing: float = 0.0, batch_size: int = 32, input_size: int | None = None,
             augment: str = "crop+flip", crop_scale: float = fdata.CROP_SCALE, precision: str = "auto",
             device: str = "auto",
             channels_last: bool = True, seed: int = 0, workers: int | None = None, limit: int | None = None,
             checkpoint_every: int = 0, keep: str = "best", no_val: bool = False, resume: bool = False,
             overwrite: bool = False, progress: bool = True, on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None
             ) -> FinetuneSummary:
    """Fine-tune a backbone and head end to end and write a run directory (kind "finetune") at `out`.

    Args:
        out: the run directory to write (`te export` consumes it). Checkpoints live in `out`.ckpt/.
        from_run_dir: a `te train` run: its backbone, weights, preprocessing, head, data set and splits.
        backbone, data, head: instead of from_run_dir: a backbone, a --data source and a new head.
        weights: the backbone's weights (with `backbone`).
        head_options: options of the new head (with `head`).
        epochs: epochs to train.
        lr: peak learning rate of the head (backbone blocks: lr * layer_decay ** depth-from-top).
        strategy: "freeze", "no_freeze", "freeze_unfreeze" or "unfreeze_milestones"; default no_freeze
            from a trained head (LP-FT), freeze_unfreeze with a new head.
        unfreeze_epoch: head-only epochs of freeze_unfreeze.
        milestones: epochs at which unfreeze_milestones unfreezes each next group, from the top.
        layer_decay: per-block learning-rate factor (1 = one rate everywhere).
        freeze_bn: keep BatchNorm running statistics frozen in trainable blocks too (the default: batch
            statistics of small batches of a new domain wreck a pretrained network's features; see
            docs/finetune.md); False lets them follow the new data.
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
        keep: "best" (highest val accuracy, the starting model included unless its head was fitted on
            train+val) or "last" weights.
        no_val: when the data has no val split, train on all of train and keep the last epoch instead of
            holding out te train's val (`core.splits.hold_out`); without it, no val at all is an error.
        resume: continue from `out`.ckpt/ when it holds a checkpoint of this same configuration.
        overwrite: replace a run at `out`, and discard a checkpoint when not resuming.
        progress: progress lines on stderr (rank 0).
        on_epoch_end: called with (epoch number, model) after each epoch's validation.

    Returns:
        The `FinetuneSummary` (the same on every rank).

    Raises:
        UsageError: bad arguments, an --out that holds another run, a checkpoint without --resume.
        TEError: the run's data can no longer be found, the loss diverged.
    """
    out = Path(out).expanduser().absolute()
    if (from_run_dir is None) == (backbone is None):
        raise UsageError("give either --from RUN or --backbone NAME --data SRC --head HEAD")
    if backbone is not None and (not data or not head):
        raise UsageError("--backbone needs --data SRC and --head HEAD (or use --from RUN)")
    for name, value in (("--epochs", epochs), ("--batch-size", batch_size)):
        if value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if keep not in KEEP:
        raise UsageError(f"--keep must be one of {', '.join(KEEP)}, got {keep!r}")
    if lr <= 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    check_out(out, overwrite)
    ckpt_dir = ckpt.checkpoint_dir(out)
    if ckpt.exists(ckpt_dir) and not resume and not overwrite:
        raise UsageError(f"{ckpt_dir} holds the checkpoint of an interrupted run; pass --resume to continue it "
                         "or --overwrite to start over")
    rank, world = dist.rank_and_world()
    if batch_size % world:
        raise UsageError(f"--batch-size {batch_size} must be divisible by the {world} processes")
    target = resolve_device(device)
    if target.type == "cuda" and world > 1:
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(target)
    chosen, precision_reason = choose_precision(precision, target)

    torch.manual_seed(seed)
    start = (from_run(from_run_dir, limit) if from_run_dir is not None else
             from_backbone(backbone, data, head, weights=weights, seed=seed, head_options=head_options,
                           limit=limit))
    torch.manual_seed(seed + rank)  # dropout masks differ between ranks, as their images do
    preprocess = fdata.scaled_preprocess(start.preprocess, input_size)
    splits = {s: [it for it in start.items if it.split == s] for s in ("train", "val", "test")}
    splits, val_note = _validation_split(splits, no_val)
    if no_val and not splits["val"]:
        keep = "last"
    if len(splits["train"]) < batch_size:
        raise UsageError(f"--batch-size {batch_size} is larger than the {len(splits['train'])} training images; "
                         "lower it")
    sets = {s: fdata.ImageSet(start.source, items, preprocess, augment, crop_scale) for s, items in splits.items()}
    name = strategy or ("no_freeze" if from_run_dir is not None else "freeze_unfreeze")
    blocks = backbone_blocks(start.model.backbone)
    plan = make_strategy(name, len(blocks), unfreeze_epoch=unfreeze_epoch, milestones=tuple(milestones),
                         freeze_bn=freeze_bn)
    steps = fdata.steps_per_epoch(len(splits["train"]), batch_size)
    cfg = OptimConfig(optimizer, lr, layer_decay, weight_decay, warmup, clip_grad, label_smoothing)
    trainer = Trainer(start.model, blocks, plan, cfg, len(start.class_names), epochs * steps, target, chosen,
                      channels_last)
    workers = _default_workers(world) if workers is None else workers
    config = {"from": str(Path(from_run_dir).absolute()) if from_run_dir is not None else None,
              "backbone": start.backbone.name, "weights": start.backbone.weights, "data": start.dataset["data"],
              "head": start.head.name, "head_options": start.head.options, "epochs": epochs,
              "strategy": name, "start_epochs": plan.start_epochs, "freeze_bn": freeze_bn,
              **asdict(cfg), "batch_size": batch_size, "input_size": preprocess.crop_size, "augment": augment,
              "crop_scale": crop_scale,
              "precision": chosen, "device_type": target.type, "channels_last": channels_last, "seed": seed,
              "limit": limit, "world_size": world, "keep": keep, "no_val": no_val, "checkpoint_every": checkpoint_every}

    writer = None
    if rank == 0:
        from transfer_engine.runs import RunWriter

        writer = RunWriter(out, overwrite=overwrite)  # --out is checked and staged before any training
    try:
        summary = _train_and_write(start, trainer, sets, plan, config, ckpt_dir, writer, rank, world, workers,
                                   resume, progress, on_epoch_end, precision_reason, val_note)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return summary


def _train_and_write(start: Start, trainer: Trainer, sets: dict, plan, config: dict, ckpt_dir: Path, writer,
                     rank: int, world: int, workers: int, resume: bool, progress: bool, on_epoch_end,
                     precision_reason: str, val_note: str | None) -> FinetuneSummary:
    from transfer_engine.finetune.finish import evaluate_all, write_run

    epochs, batch, seed = config["epochs"], config["batch_size"], config["seed"]
    eval_batch = max(batch, 64)
    model = trainer.model
    meter = StepProgress(progress and rank == 0, epochs, fdata.steps_per_epoch(len(sets["train"]), batch))
    resumed = resume and ckpt.exists(ckpt_dir)
    if resumed:
        payload = ckpt.load(ckpt_dir, config)
        model.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.scheduler.load_state_dict(payload["scheduler"])
        trainer.scaler.load_state_dict(payload["scaler"])
        state: ckpt.TrainState = payload["state"]
        best_weights = payload["best"] or _copy(model)
        if payload["note"]:
            meter.line(f"te: warning: {payload['note']}")
        ckpt.set_rng_state(payload["rng"][rank])
        meter.line(f"finetune: resuming from {ckpt_dir} at epoch {state.epoch + 1}, step {state.step}")
    else:
        if resume:
            meter.line(f"finetune: --resume: no checkpoint in {ckpt_dir}, starting from the beginning")
        if rank == 0:
            ckpt.remove(ckpt_dir)  # an --overwrite run: the old checkpoint must not mix with this one
        state = ckpt.TrainState()
        before = {s: trainer.evaluate(sets[s], eval_batch, workers, rank, world) for s in ("val", "test")
                  if len(sets[s])}
        state.before = {f"{s}_{k}": getattr(e, k) for s, e in before.items() for k in ("accuracy", "loss")}
        # A head refitted on train+val (te train --sweep) has seen val: its val accuracy says nothing about
        # how it generalizes, so the start cannot compete for "best"; an epoch of fine-tuning can.
        seen_val = start.parent_metrics.get("hyperparameters", {}).get("fitted_on") == FITTED_ON_TRAIN_VAL
        state.best = {"epoch": 0, "val_accuracy": None if seen_val else state.before.get("val_accuracy"),
                      "val_loss": None if seen_val else state.before.get("val_loss")}
        best_weights = _copy(model)
        if val_note:
            meter.line(val_note)
        meter.line(f"finetune: {plan.describe(trainer.blocks)}; {config['precision']} ({precision_reason}); "
                   f"start: val accuracy {_pct(state.before.get('val_accuracy'))}"
                   + (" (its head was fitted on train+val, so the start is not a candidate for the best weights)"
                      if seen_val else ""))

    def save(best=None) -> None:
        rng = dist.all_gather_object(ckpt.rng_state())
        if rank == 0:
            ckpt.save(ckpt_dir, config=config, state=state, model=model, optimizer=trainer.optimizer,
                      scheduler=trainer.scheduler, scaler=trainer.scaler, rng=rng, best_weights=best)

    if not resumed:
        save(best_weights)
    steps = meter.steps
    for epoch in range(state.epoch, epochs):
        trainer.set_phase(epoch)
        batches = fdata.loader(sets["train"], fdata.TrainBatches(len(sets["train"]), batch, seed, epoch, rank,
                                                                 world, start_step=state.step), workers)
        sums = EpochSums(**state.sums)
        began = time.perf_counter()

        def after_step(images: int, epoch=epoch, sums=sums, began=began) -> None:
            state.step += 1
            state.images += images
            state.sums = sums.as_dict()
            elapsed = time.perf_counter() - began
            meter.update(epoch, state.step, state.images / max(state.seconds + elapsed, 1e-9),
                         sums.loss / max(sums.count, 1))
            if config["checkpoint_every"] and state.step % config["checkpoint_every"] == 0 and state.step < steps:
                state.seconds += time.perf_counter() - began
                save()
                state.seconds -= time.perf_counter() - began

        trainer.train_steps(batches, sums, after_step)
        state.seconds += time.perf_counter() - began
        trainer.replica.sync_buffers()
        val = trainer.evaluate(sets["val"], eval_batch, workers, rank, world) if len(sets["val"]) else None
        record = {"epoch": epoch + 1, "train_loss": sums.loss / max(sums.count, 1),
                  "train_accuracy": sums.correct / max(sums.count, 1),
                  "val_loss": val.loss if val else None, "val_accuracy": val.accuracy if val else None,
                  "lr": trainer.lrs(), "trainable_backbone_blocks": sum(plan.trainable(epoch)),
                  "seconds": round(state.seconds, 3)}
        state.history.append(record)
        improved = val is not None and (state.best.get("val_accuracy") is None
                                        or val.accuracy > state.best["val_accuracy"])
        if improved or val is None:
            state.best = {"epoch": epoch + 1, "val_accuracy": record["val_accuracy"], "val_loss": record["val_loss"]}
            best_weights = _copy(model)
        state.epoch, state.step, state.sums = epoch + 1, 0, EpochSums().as_dict()
        meter.line(f"finetune: epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}, "
                   f"val accuracy {_pct(record['val_accuracy'])}" + (" (best)" if improved else ""))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
        save(best_weights if improved or val is None else None)

    final = best_weights if config["keep"] == "best" else _copy(model)
    model.load_state_dict(final)
    dist.check_in_sync(model)
    results = evaluate_all(trainer, sets, eval_batch, workers, rank, world)
    summary = FinetuneSummary(
        out=str(writer.out if writer is not None else ""), train_accuracy=results["train"].accuracy,
        val_accuracy=results["val"].accuracy if "val" in results else None,
        test_accuracy=results["test"].accuracy if "test" in results else None,
        before={k: v for k, v in state.before.items() if k.endswith("accuracy")},
        parent=_parent(start), best_epoch=int(state.best.get("epoch", epochs)) if config["keep"] == "best" else epochs,
        epochs=epochs, strategy=config["strategy"], backbone=start.backbone.name, head=start.head.name,
        input_size=config["input_size"], precision=config["precision"], device=str(trainer.device),
        world_size=world, resumed=resumed, seconds=round(state.seconds, 3),
        images_per_second=round(state.images / state.seconds, 2) if state.seconds > 0 else 0.0,
        history=state.history)
    if writer is not None:
        write_run(writer, start, sets, summary, results, state, config, model, precision_reason)
        writer.commit()
        ckpt.remove(ckpt_dir)
    dist.barrier()
    return summary


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _parent(start: Start) -> dict | None:
    if start.parent is None:
        return None
    m = start.parent_metrics
    return {"path": start.parent, **{k: m.get(k) for k in ("train_accuracy", "val_accuracy", "test_accuracy")}}


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


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
