"""One fixed-recipe fine-tuning run: set up, train the epochs, write the run directory.

The order of work: check --out and the checkpoint directory (fail before any model work), build the job
(job.py: the starting model and the data), train from the start or the checkpoint to the weights kept
(epochs.py), evaluate them on train/val/test, write the run directory (staged, then renamed into place)
and remove the checkpoints.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import torch

from transfer_engine.core import distributed as dist
from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.progress import Progress
from transfer_engine.errors import UsageError
from transfer_engine.finetune import checkpoint as ckpt
from transfer_engine.finetune import data as fdata
from transfer_engine.finetune.epochs import EpochLoop
from transfer_engine.finetune.finish import evaluate_all, write_run
from transfer_engine.finetune.job import Job, build_job
from transfer_engine.finetune.loop import Evaluation, StepProgress
from transfer_engine.finetune.records import FinetuneSummary
from transfer_engine.finetune.start import Start
from transfer_engine.runs import QAT_JSON
from transfer_engine.runs.format import fitted_on
from transfer_engine.runs.writer import check_out


def run_fixed(out: Path, cfg: FinetuneConfig, *, resume: bool = False, overwrite: bool = False,
              progress: Progress = True, on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None
              ) -> FinetuneSummary:
    """Fine-tune once with the fixed recipe `cfg` (`FinetuneConfig.fixed()`) and write the run directory `out`.

    Args and raises: as `finetune.finetune` (out: an absolute path).
    """
    if cfg.searches:
        raise ValueError("run_fixed runs one fixed recipe: pass cfg.fixed(), or call finetune() for a search")
    check_out(out, overwrite)
    ckpt_dir = ckpt.checkpoint_dir(out)
    if ckpt.exists(ckpt_dir) and not resume and not overwrite:
        raise UsageError(f"{ckpt_dir} holds the checkpoint of an interrupted run; pass --resume to continue it "
                         "or --overwrite to start over")
    job = build_job(cfg, ckpt_dir)
    writer = None
    if job.rank == 0:
        from transfer_engine.runs import RunWriter

        writer = RunWriter(out, overwrite=overwrite)  # --out is checked and staged before any training
    with writer or nullcontext():  # an error aborts the staged run (RunWriter.__exit__)
        return _train_and_write(job, writer, resume, progress, on_epoch_end)


def _train_and_write(job: Job, writer, resume: bool, progress: Progress, on_epoch_end) -> FinetuneSummary:
    steps = fdata.steps_per_epoch(len(job.sets["train"]), job.cfg.batch_size)
    meter = StepProgress(progress if job.rank == 0 else False, job.cfg.epochs, steps)
    if job.qat is not None:
        meter.line(job.qat.describe())
    loop = EpochLoop(job, meter, on_epoch_end)
    loop.begin(resume)
    loop.run()
    loop.keep()
    if job.adapters is not None:
        meter.line(job.adapters.merge())  # evaluated and written as merged: the weights te export reads
    results = evaluate_all(job.trainer, job.sets, job.eval_batch, job.workers, job.rank, job.world)
    if job.qat is not None:
        job.qat.sim.remove()  # evaluated as int8; written with its weights and biases on their int8 grids
    summary = _summary(job, loop, results, str(writer.out if writer is not None else ""))
    if writer is not None:
        write_run(writer, job.start, job.sets, summary, results, loop.state, loop.settings, job.trainer.model,
                  job.precision_reason)
        if job.qat is not None:
            writer.write_json(QAT_JSON, job.qat.record())
        writer.commit()
        ckpt.remove(job.ckpt_dir)
    dist.barrier()
    return summary


def _summary(job: Job, loop: EpochLoop, results: dict[str, Evaluation], out: str) -> FinetuneSummary:
    state, start = loop.state, job.start
    return FinetuneSummary(
        out=out, train_accuracy=results["train"].accuracy,
        val_accuracy=results["val"].accuracy if "val" in results else None,
        val_loss=results["val"].loss if "val" in results else None,
        test_accuracy=results["test"].accuracy if "test" in results else None,
        before={k: v for k, v in state.before.items() if k.endswith("accuracy")},
        parent=_parent(start), best_epoch=loop.best_epoch, epochs=job.cfg.epochs, strategy=job.strategy_name,
        backbone=start.backbone.name, head=start.head.name, input_size=job.input_size, precision=job.precision,
        device=str(job.trainer.device), world_size=job.world, resumed=loop.resumed, seconds=round(state.seconds, 3),
        images_per_second=round(state.images / state.seconds, 2) if state.seconds > 0 else 0.0,
        history=[r.to_dict() for r in state.history], stopped_early=loop.stopped_early,
        start_candidate=bool(state.before.get("start_candidate", True)))


def _parent(start: Start) -> dict | None:
    if start.parent is None:
        return None
    m = start.parent_metrics
    return {"path": start.parent, **{k: m.get(k) for k in ("train_accuracy", "val_accuracy", "test_accuracy")},
            "fitted_on": fitted_on(m)}  # a fine-tune of a fine-tune: what the first one started from
