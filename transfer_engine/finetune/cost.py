"""What a fine-tuning run costs on this machine, measured before it runs (the schedule recipe sizes its
epochs to the budget with it)."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.finetune import checkpoint as ckpt
from transfer_engine.finetune import data as fdata
from transfer_engine.finetune.job import build_job
from transfer_engine.finetune.loop import EpochSums

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


class _Laps:
    """An `after_step` callback that records the seconds between consecutive calls (the first: since creation)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.mark = time.perf_counter()

    def __call__(self, _images: int) -> None:
        now = time.perf_counter()
        self.times.append(now - self.mark)
        self.mark = now


def measure_cost(cfg: FinetuneConfig) -> EpochCost:
    """Time PROBE_STEPS training steps and one evaluation batch of `cfg`'s run on a throwaway copy of its
    start, so a recipe can size its schedule to a wall-clock budget before the run begins."""
    began = time.perf_counter()
    job = build_job(cfg.fixed(epochs=1), ckpt.checkpoint_dir(Path(os.devnull)))
    trainer, sets = job.trainer, job.sets
    setup = time.perf_counter() - began
    trainer.set_phase(LATE_EPOCH)  # every block the strategy ever trains: the steps that cost the most
    batches = fdata.loader(sets["train"], fdata.TrainBatches(len(sets["train"]), job.cfg.batch_size, job.cfg.seed, 0,
                                                             job.rank, job.world), job.workers)
    laps = _Laps()
    trainer.train_steps(itertools.islice(batches, PROBE_STEPS), EpochSums(), laps)
    times = laps.times
    step = sum(times[1:]) / (len(times) - 1) if len(times) > 1 else times[0]
    probe = sets["val"] if len(sets["val"]) else sets["train"]
    subset = fdata.ImageSet(probe.source, probe.items[:job.eval_batch], probe.preprocess, "none", probe.crop_scale)
    t0 = time.perf_counter()
    counted = trainer.evaluate(subset, job.eval_batch, job.workers, job.rank, job.world).count
    eval_image = (time.perf_counter() - t0) / max(1, counted)
    return EpochCost(setup, step, eval_image, fdata.steps_per_epoch(len(sets["train"]), job.cfg.batch_size),
                     len(sets["train"]), len(sets["val"]), len(sets["test"]))
