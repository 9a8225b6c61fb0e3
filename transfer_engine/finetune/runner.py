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

from transfer_engine.core.choices import FINETUNE_PRECISIONS as PRECISIONS
from transfer_engine.core.choices import KEEP
from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.runtime import cpu_has_native_bf16, device_of_this_rank, resolve_device
from transfer_engine.core.splits import HOLDOUT_FRACTION, hold_out
from transfer_engine.errors import UsageError
from transfer_engine.finetune import checkpoint as ckpt
from transfer_engine.finetune import data as fdata
from transfer_engine.finetune import distributed as dist
from transfer_engine.finetune import lora
from transfer_engine.finetune.loop import EpochSums, OptimConfig, StepProgress, Trainer
from transfer_engine.finetune.start import Start, from_backbone, from_run
from transfer_engine.finetune.strategies import backbone_blocks, make_strategy
from transfer_engine.runs.format import FITTED_ON_TRAIN_VAL
from transfer_engine.runs.writer import check_out



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
    stopped_early: bool = False  # --patience ended training before its last epoch
    start_candidate: bool = True  # False: the start's head saw val (te train --sweep), so it could not be kept
    search: dict | None = None   # a recipe search: its trials and what it chose (finetune/search.py)
    val_loss: float | None = None  # of the kept weights (breaks ties of val accuracy: runner.better_on_val)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_precision(requested: str, device: torch.device) -> tuple[str, str]:
    """Resolve --precision: auto = bf16 autocast where the GPU or CPU has bf16, fp16 on older GPUs, fp32 elsewhere."""
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
    # bf16 autocast trains faster than fp32 with the same loss curve where the CPU has native bf16, and is
    # emulated and several times slower where it has not (docs/finetune.md, "Precision and speed").
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "auto: bf16 autocast (this CPU has native bf16: faster, same loss curve)"
    return "fp32", "auto: fp32 (this CPU has no native bf16; emulated bf16 is several times slower)"


def _default_workers(world: int) -> int:
    cpus = os.cpu_count() or 1
    per_rank = cpus // (2 * world)
    return min(4, per_rank) if per_rank > 1 else 0


def finetune(out: str | os.PathLike, config: FinetuneConfig | None = None, *, resume: bool = False,
             overwrite: bool = False, progress: bool = True,
             on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None, **options: Any) -> FinetuneSummary:
    """Fine-tune a backbone and head end to end and write a run directory (kind "finetune") at `out`.

    Args:
        out: the run directory to write (`te export` consumes it). Checkpoints live in `out`.ckpt/.
        config: what to do (`core.configs.FinetuneConfig`, whose docstring describes every field); or
            its fields as keywords (`options`), which also override those of a `config` given.

    Keywords that are not part of the config (they say how to run, not what):
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
    cfg = replace(config, **options) if config is not None else FinetuneConfig(**options)
    out = Path(out).expanduser().absolute()
    if cfg.strategy == "lora":
        lora.require_peft()  # before any work, a search's included
    if cfg.searches:
        from transfer_engine.finetune.search import search

        return search(out, cfg, resume=resume, overwrite=overwrite, progress=progress)
    cfg = cfg.fixed()
    check_out(out, overwrite)
    ckpt_dir = ckpt.checkpoint_dir(out)
    if ckpt.exists(ckpt_dir) and not resume and not overwrite:
        raise UsageError(f"{ckpt_dir} holds the checkpoint of an interrupted run; pass --resume to continue it "
                         "or --overwrite to start over")
    job = _build_job(cfg, ckpt_dir)
    rank = job.rank

    writer = None
    if rank == 0:
        from transfer_engine.runs import RunWriter

        writer = RunWriter(out, overwrite=overwrite)  # --out is checked and staged before any training
    try:
        summary = _train_and_write(job, writer, resume, progress, on_epoch_end)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return summary


def _build_job(cfg: FinetuneConfig, ckpt_dir: Path) -> "_Job":
    """Everything a run needs before its first step: device, precision, the starting model, the data, the
    strategy and the trainer (whose schedule spans `cfg.epochs`)."""
    rank, world = dist.rank_and_world()
    if cfg.batch_size % world:
        raise UsageError(f"--batch-size {cfg.batch_size} must be divisible by the {world} processes")
    target = device_of_this_rank(resolve_device(cfg.device), world)
    chosen, precision_reason = choose_precision(cfg.precision, target)

    torch.manual_seed(cfg.seed)
    start = (from_run(cfg.from_run_dir, cfg.limit) if cfg.from_run_dir is not None else
             from_backbone(cfg.backbone, cfg.data, cfg.head, weights=cfg.weights, seed=cfg.seed,
                           head_options=cfg.head_options, limit=cfg.limit))
    torch.manual_seed(cfg.seed + rank)  # dropout masks differ between ranks, as their images do
    preprocess = fdata.scaled_preprocess(start.preprocess, cfg.input_size)
    splits = {s: [it for it in start.items if it.split == s] for s in ("train", "val", "test")}
    splits, val_note = _validation_split(splits, cfg.no_val)
    if cfg.no_val and not splits["val"]:
        cfg = replace(cfg, keep="last")
    if len(splits["train"]) < cfg.batch_size:
        raise UsageError(f"--batch-size {cfg.batch_size} is larger than the {len(splits['train'])} training images; "
                         "lower it")
    sets = {s: fdata.ImageSet(start.source, items, preprocess, cfg.augment, cfg.crop_scale)
            for s, items in splits.items()}
    name = cfg.strategy or ("no_freeze" if cfg.from_run_dir is not None else "freeze_unfreeze")
    adapters = (lora.attach(start.model.backbone, rank=cfg.lora_rank, alpha=cfg.lora_alpha, targets=cfg.lora_targets,
                            input_size=preprocess.crop_size, name=start.backbone.name) if name == "lora" else None)
    blocks = backbone_blocks(start.model.backbone)
    plan = make_strategy(name, len(blocks), unfreeze_epoch=cfg.unfreeze_epoch, milestones=cfg.milestones,
                         freeze_bn=cfg.freeze_bn, adapters=[b.has_adapters for b in blocks])
    steps = fdata.steps_per_epoch(len(splits["train"]), cfg.batch_size)
    optim = OptimConfig(cfg.optimizer, cfg.lr, cfg.layer_decay, cfg.weight_decay, cfg.warmup, cfg.clip_grad,
                        cfg.label_smoothing)
    trainer = Trainer(start.model, blocks, plan, optim, len(start.class_names), cfg.epochs * steps, target, chosen,
                      cfg.channels_last, cfg.backbone_dropout)
    job = _Job(cfg, start, trainer, sets, plan, name, chosen, precision_reason, preprocess.crop_size, val_note,
               ckpt_dir, rank, world, _default_workers(world) if cfg.workers is None else cfg.workers, adapters)
    return job


PROBE_STEPS = 4  # the first warms up (kernel selection, allocations); the others are timed
LATE_EPOCH = 10 ** 6  # an epoch past every strategy's unfreezing


@dataclass(frozen=True)
class EpochCost:
    """What a run of `cfg` costs on this machine, measured by `measure_cost` (seconds).

    Attributes:
        setup: building the start (the model, the data set's records) and the trainer.
        step: one optimizer step (augmented batch, forward, backward, update).
        eval_image: evaluating one image (val each epoch; val and test before; every split at the end).
        steps_per_epoch, val_images, test_images, train_images: the run's sizes.
    """

    setup: float
    step: float
    eval_image: float
    steps_per_epoch: int
    train_images: int
    val_images: int
    test_images: int

    def run_seconds(self, epochs: int) -> float:
        """The wall clock of a run of `epochs`: set-up, the evaluations before and after, and the epochs."""
        before = self.val_images + self.test_images
        after = self.train_images + self.val_images + self.test_images
        epoch = self.steps_per_epoch * self.step + self.val_images * self.eval_image
        return self.setup + (before + after) * self.eval_image + epochs * epoch


def measure_cost(cfg: FinetuneConfig) -> EpochCost:
    """Time PROBE_STEPS training steps and one evaluation batch of `cfg`'s run on a throwaway copy of its
    start, so a recipe can size its schedule to a wall-clock budget before the run begins."""
    import itertools

    began = time.perf_counter()
    job = _build_job(cfg.fixed(epochs=1), ckpt.checkpoint_dir(Path(os.devnull)))
    trainer, sets = job.trainer, job.sets
    setup = time.perf_counter() - began
    trainer.set_phase(LATE_EPOCH)  # every block the strategy ever trains: the steps that cost the most
    batches = fdata.loader(sets["train"], fdata.TrainBatches(len(sets["train"]), job.cfg.batch_size, job.cfg.seed, 0,
                                                             job.rank, job.world), job.workers)
    times: list[float] = []
    mark = [time.perf_counter()]

    def lap(_images: int) -> None:
        now = time.perf_counter()
        times.append(now - mark[0])
        mark[0] = now

    trainer.train_steps(itertools.islice(batches, PROBE_STEPS), EpochSums(), lap)
    step = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0]
    probe = sets["val"] if len(sets["val"]) else sets["train"]
    eval_batch = max(job.cfg.batch_size, 64)
    subset = fdata.ImageSet(probe.source, probe.items[:eval_batch], probe.preprocess, "none", probe.crop_scale)
    t0 = time.perf_counter()
    counted = trainer.evaluate(subset, eval_batch, job.workers, job.rank, job.world).count
    eval_image = (time.perf_counter() - t0) / max(1, counted)
    return EpochCost(setup, step, eval_image, fdata.steps_per_epoch(len(sets["train"]), job.cfg.batch_size),
                     len(sets["train"]), len(sets["val"]), len(sets["test"]))


@dataclass
class _Job:
    """One fine-tuning run, resolved: the config and everything built from it before training starts."""

    cfg: FinetuneConfig
    start: Start
    trainer: Trainer
    sets: dict
    plan: Any
    strategy: str          # the strategy's name, resolved from the config's (None: the default for the start)
    precision: str         # the precision chosen, and why
    precision_reason: str
    input_size: int
    val_note: str | None
    ckpt_dir: Path
    rank: int
    world: int
    workers: int
    adapters: lora.Adapters | None = None  # --strategy lora: merged into the backbone before the run is written

    def settings(self) -> dict[str, Any]:
        """The resolved settings: a checkpoint resumes only under the same ones; run.json records them."""
        cfg, start = self.cfg, self.start
        return {"from": str(Path(cfg.from_run_dir).absolute()) if cfg.from_run_dir is not None else None,
                "backbone": start.backbone.name, "weights": start.backbone.weights, "data": start.dataset["data"],
                "head": start.head.name, "head_options": start.head.options, "epochs": cfg.epochs,
                "strategy": self.strategy, "start_epochs": self.plan.start_epochs, "freeze_bn": cfg.freeze_bn,
                "backbone_dropout": cfg.backbone_dropout,
                **asdict(self.trainer.cfg), "batch_size": cfg.batch_size, "input_size": self.input_size,
                "augment": cfg.augment, "crop_scale": cfg.crop_scale, "precision": self.precision,
                "device_type": self.trainer.device.type, "channels_last": cfg.channels_last, "seed": cfg.seed,
                "limit": cfg.limit, "world_size": self.world, "keep": cfg.keep, "no_val": cfg.no_val,
                "patience": cfg.patience, "checkpoint_every": cfg.checkpoint_every,
                **(self.adapters.settings() if self.adapters is not None else {})}


def _train_and_write(job: _Job, writer, resume: bool, progress: bool, on_epoch_end) -> FinetuneSummary:
    from transfer_engine.finetune.finish import evaluate_all, write_run

    cfg, start, trainer, sets, plan = job.cfg, job.start, job.trainer, job.sets, job.plan
    rank, world, workers, ckpt_dir = job.rank, job.world, job.workers, job.ckpt_dir
    config = job.settings()
    epochs, batch, seed = cfg.epochs, cfg.batch_size, cfg.seed
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
        state.before["start_candidate"] = not seen_val
        best_weights = _copy(model)
        if job.val_note:
            meter.line(job.val_note)
        meter.line(f"finetune: {plan.describe(trainer.blocks)}; {job.precision} ({job.precision_reason}); "
                   f"start: val accuracy {_pct(state.before.get('val_accuracy'))}"
                   + ((" (its head was fitted on train+val: the last epoch must beat this optimistic figure to "
                       "replace the start)" if cfg.keep == "final" else
                       " (its head was fitted on train+val, so the start is not a candidate for the best weights)")
                      if seen_val else ""))

    def save(best=None) -> None:
        rng = dist.all_gather_object(ckpt.rng_state())
        if rank == 0:
            ckpt.save(ckpt_dir, config=config, state=state, model=model, optimizer=trainer.optimizer,
                      scheduler=trainer.scheduler, scaler=trainer.scaler, rng=rng, best_weights=best)

    if not resumed:
        save(best_weights)
    steps = meter.steps
    stopped_early = False
    for epoch in range(state.epoch, epochs):
        # Checked before each epoch (not after), so a run resumed right after its last useful epoch stops too.
        # Patience counts from the best *trained* epoch, not from the start: the first epochs of fine-tuning
        # often fall below a sharp warm-start head on val and then pass it (docs/finetune.md, "The recipe:
        # searched on val, within a budget"); counting from the start would stop them at the dip.
        since = _epochs_since_best_trained(state.history)
        if cfg.patience and since is not None and since >= cfg.patience:
            stopped_early = True
            meter.line(f"finetune: stopping after epoch {epoch}: val has not improved for {cfg.patience} "
                       f"epoch(s) (--patience); the best was epoch {state.best.get('epoch', 0)}")
            break
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
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and state.step < steps:
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
        # --keep final: the start and the last epoch are the only candidates, decided after the last epoch
        tracks_best = cfg.keep != "final"
        improved = tracks_best and val is not None and better_on_val(record, state.best)
        replaced = improved or (tracks_best and val is None)
        if replaced:
            state.best = {"epoch": epoch + 1, "val_accuracy": record["val_accuracy"], "val_loss": record["val_loss"]}
            best_weights = _copy(model)
        state.epoch, state.step, state.sums = epoch + 1, 0, EpochSums().as_dict()
        meter.line(f"finetune: epoch {epoch + 1}/{epochs}: train loss {record['train_loss']:.4f}, "
                   f"val accuracy {_pct(record['val_accuracy'])}" + (" (best)" if improved else ""))
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model)
        save(best_weights if replaced else None)

    if cfg.keep == "final":
        state.best = _start_or_last(state)
    kept_stored = cfg.keep == "best" or (cfg.keep == "final" and state.best.get("epoch") == 0)
    final = best_weights if kept_stored else _copy(model)
    model.load_state_dict(final)
    dist.check_in_sync(model)
    if job.adapters is not None:
        meter.line(job.adapters.merge())  # evaluated and written as merged: the weights te export reads
    results = evaluate_all(trainer, sets, eval_batch, workers, rank, world)
    summary = FinetuneSummary(
        out=str(writer.out if writer is not None else ""), train_accuracy=results["train"].accuracy,
        val_accuracy=results["val"].accuracy if "val" in results else None,
        val_loss=results["val"].loss if "val" in results else None,
        test_accuracy=results["test"].accuracy if "test" in results else None,
        before={k: v for k, v in state.before.items() if k.endswith("accuracy")},
        parent=_parent(start), best_epoch=(int(state.best.get("epoch", epochs)) if cfg.keep in ("best", "final")
                                             else len(state.history)),
        epochs=epochs, strategy=job.strategy, backbone=start.backbone.name, head=start.head.name,
        input_size=job.input_size, precision=job.precision, device=str(trainer.device),
        world_size=world, resumed=resumed, seconds=round(state.seconds, 3),
        images_per_second=round(state.images / state.seconds, 2) if state.seconds > 0 else 0.0,
        history=state.history, stopped_early=stopped_early,
        start_candidate=bool(state.before.get("start_candidate", True)))
    if writer is not None:
        write_run(writer, start, sets, summary, results, state, config, model, job.precision_reason)
        writer.commit()
        ckpt.remove(ckpt_dir)
    dist.barrier()
    return summary


VAL_LOSS_MIN_DELTA = 1e-4  # mean cross-entropy: a smaller fall of the val loss does not break a tie


def better_on_val(candidate: dict, best: dict) -> bool:
    """Whether `candidate` beats `best` on val: higher accuracy, or the same accuracy at a lower val loss.

    Both are dicts with `val_accuracy` and `val_loss` (None: not measured; anything beats a None best).
    The loss breaks ties because a small val saturates: its accuracy can stay put over several epochs
    while the val loss falls and test accuracy rises, and keeping the earlier on every tie threw that away
    (the run: docs/finetune.md, "The recipe: searched on val, within a budget"). A tie on both
    keeps the earlier, cheaper one; so does a loss lower by less than VAL_LOSS_MIN_DELTA (rounding, not
    progress: lr 1e-12 moves a zero BatchNorm shift and the loss's last bits, nothing else).
    """
    if candidate.get("val_accuracy") is None:
        return False
    if best.get("val_accuracy") is None or candidate["val_accuracy"] != best["val_accuracy"]:
        return best.get("val_accuracy") is None or candidate["val_accuracy"] > best["val_accuracy"]
    return (candidate.get("val_loss") is not None and best.get("val_loss") is not None
            and candidate["val_loss"] < best["val_loss"] - VAL_LOSS_MIN_DELTA)


def _start_or_last(state) -> dict:
    """--keep final's choice, as `state.best`: the last epoch, unless the start is better on val
    (`better_on_val`). A start whose head saw val (te train --sweep refits on train+val) is compared too:
    its val accuracy is optimistic, so the last epoch must beat an optimistic bar to replace it, which
    keeps a run that wrecked the start from being written (the conservative side). Without val, the last."""
    last = state.history[-1] if state.history else None
    start = {"epoch": 0, "val_accuracy": state.before.get("val_accuracy"), "val_loss": state.before.get("val_loss")}
    if last is None or (start["val_accuracy"] is not None and better_on_val(start, last)):
        return start
    return {"epoch": last["epoch"], "val_accuracy": last["val_accuracy"], "val_loss": last["val_loss"]}


def _epochs_since_best_trained(history: list[dict]) -> int | None:
    """Epochs since the best trained epoch on val (by `better_on_val`), or None when nothing is measured."""
    best: dict = {}
    for record in history:
        if better_on_val(record, best):
            best = record
    return None if not best else int(history[-1]["epoch"]) - int(best["epoch"])


def _copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _parent(start: Start) -> dict | None:
    if start.parent is None:
        return None
    m = start.parent_metrics
    return {"path": start.parent, **{k: m.get(k) for k in ("train_accuracy", "val_accuracy", "test_accuracy")},
            "fitted_on": m.get("hyperparameters", {}).get("fitted_on")}


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
