"""The epochs of one fine-tuning run: from the start (or a checkpoint) to the weights the run keeps.

`EpochLoop` evaluates the starting model ("before") or restores a checkpoint, then trains epoch by epoch:
strategy phase, optimizer steps, validation, the best weights so far, a checkpoint. --patience ends it
early; at the end `keep()` loads the weights the run keeps (selection.py decides which).
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from transfer_engine.core import distributed as dist
from transfer_engine.core.format import percent
from transfer_engine.finetune import checkpoint as ckpt
from transfer_engine.finetune import data as fdata
from transfer_engine.finetune.distributed import check_in_sync
from transfer_engine.finetune.job import Job, resume_settings
from transfer_engine.finetune.loop import EpochSums, Evaluation, StepProgress
from transfer_engine.finetune.records import Candidate, EpochRecord
from transfer_engine.finetune.selection import better_on_val, epochs_since_best_trained, start_or_last
from transfer_engine.runs.format import FITTED_ON_TRAIN_VAL, fitted_on

Weights = dict[str, torch.Tensor]


class EpochLoop:
    """Trains `job` epoch by epoch; `begin()`, then `run()`, then `keep()`.

    Attributes:
        state: where training stands (the checkpoint's `TrainState`: history, best, before).
        resumed: whether `begin()` continued from a checkpoint.
        stopped_early: whether --patience ended training before its last epoch.
        settings: `resume_settings(job.cfg, job)`: what a checkpoint must match, and what run.json records.
    """

    def __init__(self, job: Job, meter: StepProgress,
                 on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None) -> None:
        self.job, self.meter, self.on_epoch_end = job, meter, on_epoch_end
        self.trainer, self.cfg, self.model = job.trainer, job.cfg, job.trainer.model
        self.settings = resume_settings(job.cfg, job)
        self.state = ckpt.TrainState()
        self.best_weights: Weights | None = None
        self.resumed = False
        self.stopped_early = False
        self._epoch, self._sums, self._began = 0, EpochSums(), 0.0  # the epoch in progress (`_after_step`)

    # -- the start

    def begin(self, resume: bool) -> None:
        """Continue from the job's checkpoint when `resume` finds one; else evaluate the start and checkpoint it."""
        job = self.job
        self.resumed = resume and ckpt.exists(job.ckpt_dir)
        if self.resumed:
            self._restore()
            return
        if resume:
            self.meter.line(f"finetune: --resume: no checkpoint in {job.ckpt_dir}, starting from the beginning")
        if job.rank == 0:
            ckpt.remove(job.ckpt_dir)  # an --overwrite run: the old checkpoint must not mix with this one
        self._evaluate_start()
        self._save(self.best_weights)

    def _restore(self) -> None:
        job, trainer = self.job, self.trainer
        payload = ckpt.load(job.ckpt_dir, self.settings)
        self.model.load_state_dict(payload["model"])
        trainer.optimizer.load_state_dict(payload["optimizer"])
        trainer.scheduler.load_state_dict(payload["scheduler"])
        trainer.scaler.load_state_dict(payload["scaler"])
        self.state = payload["state"]
        self.best_weights = payload["best"] or _copy(self.model)
        if payload["note"]:
            self.meter.line(f"te: warning: {payload['note']}")
        ckpt.set_rng_state(payload["rng"][job.rank])
        self.meter.line(f"finetune: resuming from {job.ckpt_dir} at epoch {self.state.epoch + 1}, "
                        f"step {self.state.step}")

    def _evaluate_start(self) -> None:
        job, state = self.job, self.state
        before = {s: self._evaluate(s) for s in ("val", "test") if len(job.sets[s])}
        state.before = {f"{s}_{k}": getattr(e, k) for s, e in before.items() for k in ("accuracy", "loss")}
        # A head refitted on train+val (te train --sweep) has seen val: its val accuracy says nothing about
        # how it generalizes, so the start cannot compete for "best"; an epoch of fine-tuning can.
        seen_val = fitted_on(job.start.parent_metrics) == FITTED_ON_TRAIN_VAL
        state.best = Candidate(0, None if seen_val else state.before.get("val_accuracy"),
                               None if seen_val else state.before.get("val_loss"))
        state.before["start_candidate"] = not seen_val
        self.best_weights = _copy(self.model)
        if job.val_note:
            self.meter.line(job.val_note)
        self.meter.line(f"finetune: {job.plan.describe(self.trainer.blocks)}; {job.precision} ({job.precision_reason}); "
                        f"start: val accuracy {percent(state.before.get('val_accuracy'))}" + (_seen_val_note(self.cfg.keep)
                                                                                        if seen_val else ""))

    # -- the epochs

    def run(self) -> None:
        """Train the epochs left (all of them, or those after the checkpoint), or until --patience runs out."""
        for epoch in range(self.state.epoch, self.cfg.epochs):
            if self._out_of_patience(epoch):
                self.stopped_early = True
                break
            self._train_epoch(epoch)

    def _out_of_patience(self, epoch: int) -> bool:
        # Checked before each epoch (not after), so a run resumed right after its last useful epoch stops too.
        # Patience counts from the best *trained* epoch, not from the start: the first epochs of fine-tuning
        # often fall below a sharp warm-start head on val and then pass it (docs/finetune.md, "The recipe:
        # searched on val, within a budget"); counting from the start would stop them at the dip.
        since = epochs_since_best_trained(self.state.history)
        if not (self.cfg.patience and since is not None and since >= self.cfg.patience):
            return False
        best = self.state.best.epoch if self.state.best is not None else 0
        self.meter.line(f"finetune: stopping after epoch {epoch}: val has not improved for {self.cfg.patience} "
                        f"epoch(s) (--patience); the best was epoch {best}")
        return True

    def _train_epoch(self, epoch: int) -> None:
        job, state, trainer = self.job, self.state, self.trainer
        trainer.set_phase(epoch)
        batches = fdata.loader(job.sets["train"], fdata.TrainBatches(len(job.sets["train"]), self.cfg.batch_size,
                                                                     self.cfg.seed, epoch, job.rank, job.world,
                                                                     start_step=state.step), job.workers)
        self._epoch, self._sums, self._began = epoch, EpochSums(**state.sums), time.perf_counter()
        trainer.train_steps(batches, self._sums, self._after_step)
        state.seconds += time.perf_counter() - self._began
        trainer.replica.sync_buffers()
        val = self._evaluate("val") if len(job.sets["val"]) else None
        record = self._record(epoch, val)
        state.history.append(record)
        improved, replaced = self._select(record)
        state.epoch, state.step, state.sums = epoch + 1, 0, EpochSums().as_dict()
        self.meter.line(f"finetune: epoch {epoch + 1}/{self.cfg.epochs}: train loss {record.train_loss:.4f}, "
                        f"val accuracy {percent(record.val_accuracy)}" + (" (best)" if improved else ""))
        if self.on_epoch_end is not None:
            self.on_epoch_end(epoch + 1, self.model)
        self._save(self.best_weights if replaced else None)

    def _after_step(self, images: int) -> None:
        """After each optimizer step: count it, draw the progress line, checkpoint every --checkpoint-every."""
        state, sums, began = self.state, self._sums, self._began
        state.step += 1
        state.images += images
        state.sums = sums.as_dict()
        elapsed = time.perf_counter() - began
        self.meter.update(self._epoch, state.step, state.images / max(state.seconds + elapsed, 1e-9),
                          sums.loss / max(sums.count, 1))
        every = self.cfg.checkpoint_every
        if every and state.step % every == 0 and state.step < self.meter.steps:
            state.seconds += time.perf_counter() - began  # the checkpoint records the time so far
            self._save()
            state.seconds -= time.perf_counter() - began

    def _record(self, epoch: int, val: Evaluation | None) -> EpochRecord:
        sums = self._sums
        return EpochRecord(epoch=epoch + 1, train_loss=sums.loss / max(sums.count, 1),
                           train_accuracy=sums.correct / max(sums.count, 1),
                           val_loss=val.loss if val else None, val_accuracy=val.accuracy if val else None,
                           lr=self.trainer.lrs(), trainable_backbone_blocks=sum(self.job.plan.trainable(epoch)),
                           seconds=round(self.state.seconds, 3))

    def _select(self, record: EpochRecord) -> tuple[bool, bool]:
        """Whether `record` is better on val than the best so far, and whether it replaced it (without val:
        every epoch does; --keep final: none does, the choice waits for the last epoch)."""
        tracks_best = self.cfg.keep != "final"
        measured = record.val_accuracy is not None
        improved = tracks_best and measured and better_on_val(record, self.state.best)
        replaced = improved or (tracks_best and not measured)
        if replaced:
            self.state.best = Candidate.of(record)
            self.best_weights = _copy(self.model)
        return improved, replaced

    # -- the end

    def keep(self) -> None:
        """Load the weights the run keeps into the model (--keep final decides between the start and the last
        epoch now; --keep last keeps the model as it is)."""
        state, keep = self.state, self.cfg.keep
        if keep == "final":
            start = Candidate(0, state.before.get("val_accuracy"), state.before.get("val_loss"))
            state.best = start_or_last(start, state.history)
            kept_stored = state.best.epoch == 0
        else:
            kept_stored = keep == "best"
        if kept_stored:
            self.model.load_state_dict(self.best_weights)
        check_in_sync(self.model)

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights the run keeps (0: the start), after `keep()`."""
        if self.cfg.keep in ("best", "final"):
            return self.state.best.epoch if self.state.best is not None else self.cfg.epochs
        return len(self.state.history)

    def _evaluate(self, split: str) -> Evaluation:
        job = self.job
        return self.trainer.evaluate(job.sets[split], job.eval_batch, job.workers, job.rank, job.world)

    def _save(self, best: Weights | None = None) -> None:
        """Checkpoint (every rank's RNG state gathered; rank 0 writes), with the best weights when they changed."""
        rng = dist.all_gathered(ckpt.rng_state(), "gathering the ranks' random states")
        if self.job.rank == 0:
            trainer = self.trainer
            ckpt.save(self.job.ckpt_dir, config=self.settings, state=self.state, model=self.model,
                      optimizer=trainer.optimizer, scheduler=trainer.scheduler, scaler=trainer.scaler, rng=rng,
                      best_weights=best)


def _seen_val_note(keep: str | None) -> str:
    if keep == "final":
        return (" (its head was fitted on train+val: the last epoch must beat this optimistic figure to replace the "
                "start)")
    return " (its head was fitted on train+val, so the start is not a candidate for the best weights)"


def _copy(model: torch.nn.Module) -> Weights:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
