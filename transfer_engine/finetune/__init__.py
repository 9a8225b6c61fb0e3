"""`te finetune`: train backbone and head end to end, warm-started from a `te train` run (LP-FT).

    >>> from transfer_engine.finetune import finetune                                   # doctest: +SKIP
    >>> s = finetune("runs/ft", from_run_dir="runs/linear", epochs=2, input_size=64)    # doctest: +SKIP
    >>> s = finetune("runs/ft2", FinetuneConfig(from_run_dir="runs/linear", epochs=2))  # doctest: +SKIP
    >>> s.before["test_accuracy"], s.test_accuracy                                       # doctest: +SKIP

Modules, each calling only those below it:

    __init__    `finetune()`: a recipe search (search.py) or one fixed-recipe run (fixed.py)
    search      the recipes of several runs (schedule, search); trials.py: their runs in OUT.search/
    fixed       one fixed-recipe run: set up (job.py), train (epochs.py), write (finish.py, plots.py)
    epochs      the epoch loop; selection.py: which epoch (or the start) is kept
    job         a run resolved from its config, and what `--resume` must match (`resume_settings`);
                precision.py (--precision), start.py (--from RUN or --backbone/--data/--head)
    cost        a run's cost measured before it runs (the schedule's length)
    below       loop (optimizer step, evaluation), strategies (blocks, freeze schedules, layer-wise
                rates), data (splits, augmentation, samplers), distributed (DDP that follows the
                strategy), checkpoint (--resume), lora, records (typed records and their JSON form)
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.progress import Progress
from transfer_engine.finetune import fixed, lora, search
from transfer_engine.finetune.records import FinetuneSummary
from transfer_engine.finetune.strategies import STRATEGIES

__all__ = ["STRATEGIES", "FinetuneConfig", "FinetuneSummary", "finetune"]


def finetune(out: str | os.PathLike, config: FinetuneConfig | None = None, *, resume: bool = False,
             overwrite: bool = False, progress: Progress = True,
             on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None, **options: Any) -> FinetuneSummary:
    """Fine-tune a backbone and head end to end and write a run directory (kind "finetune") at `out`.

    Args:
        out: the run directory to write (`te export` consumes it). Checkpoints live in `out`.ckpt/.
        config: what to do (`core.configs.FinetuneConfig`, whose docstring describes every field); or
            its fields as keywords (`options`), which also override those of a `config` given.

    Keywords that are not part of the config (they say how to run, not what):
        resume: continue from `out`.ckpt/ when it holds a checkpoint of this same configuration.
        overwrite: replace a run at `out`, and discard a checkpoint when not resuming.
        progress: progress lines (rank 0): True on stderr, False none, a function is handed each
            (`core.progress`).
        on_epoch_end: called with (epoch number, model) after each epoch's validation (a fixed recipe's).

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
        return search.search(out, cfg, resume=resume, overwrite=overwrite, progress=progress)
    return fixed.run_fixed(out, cfg.fixed(), resume=resume, overwrite=overwrite, progress=progress,
                           on_epoch_end=on_epoch_end)
