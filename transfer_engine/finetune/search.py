"""The recipe search of `te finetune`: what it does when neither --epochs nor --lr is given.

Fine-tuning pays on some data and not on other data, and the peak learning rate decides most of it
(too low: nothing moves; too high: the pretrained features are wrecked before the head adapts). So te
does what its `te train --sweep` does for heads: it tries, on val, within a wall-clock budget.

    trials  one run of TRIAL_EPOCHS (past the strategy's head-only epochs; --epochs sets the most) per
            peak lr of LR_GRID, highest first, each with its own warmup and cosine decay and early
            stopping (PATIENCE epochs without a better val, counted from its best trained epoch)

Why whole runs and not short screens: the first epochs of fine-tuning at a rate that pays often fall
below a sharp warm-start head on val before they pass it, so a one-epoch screen rewards the rate that
moves least (an earlier search that screened did exactly that and ended at the start). Why highest
first: the highest rate of the grid is the one that paid on the shifted data sets tried, so a budget
that fits one trial spends it there; the lower rates are the fallback for data where it wrecks the
head, and the start stays a candidate either way. The runs behind both: docs/finetune.md, "The recipe:
searched on val, within a budget".

Every trial is an ordinary fixed-recipe run (`fixed.run_fixed`) from the same start, so each keeps its best
epoch on val (`selection.better_on_val`: accuracy, then val loss) with the start itself as a candidate (epoch 0). The
search keeps the trial best by the same order (the earlier one on a tie), so the run never ends below the
start on val; when no trial beat the start, it says plainly that fine-tuning did not pay and writes the
start.

The budget (`--budget MINUTES`) bounds the wall clock of the trials: a trial runs with the epochs whose
estimate (from the trials before it: set-up and evaluation time plus training time per epoch) fits what
is left, and is skipped when fewer than MIN_TRIAL_EPOCHS fit; the first trial always runs. Trials live in
OUT.search/ (each a run directory, plus trials.json; trials.py) until the chosen one becomes OUT; a killed
search continues with `--resume` (finished trials are reused, the interrupted one resumes from its checkpoint).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from transfer_engine.core import distributed as dist
from transfer_engine.core.configs import SCHEDULE_EPOCHS, SCHEDULE_LR, SCHEDULE_SETTINGS, FinetuneConfig
from transfer_engine.core.format import percent
from transfer_engine.core.progress import Progress
from transfer_engine.errors import UsageError
from transfer_engine.finetune import cost
from transfer_engine.finetune.job import strategy_name
from transfer_engine.finetune.records import FinetuneSummary, Trial
from transfer_engine.finetune.selection import best_trial
from transfer_engine.finetune.trials import Workspace, write_json
from transfer_engine.runs.writer import check_out

LR_GRID = (3e-4, 1e-4, 3e-5)  # tried in this order (why: the module's docstring)
SCHEDULE_JSON = "schedule.json"
TRIAL_EPOCHS = 6
MIN_TRIAL_EPOCHS = 2  # fewer trained epochs than this only measure the dip below the start
PATIENCE = 2


def search(out: Path, cfg: FinetuneConfig, *, resume: bool, overwrite: bool, progress: Progress) -> FinetuneSummary:
    """Run the recipe search for `cfg` (a config whose `searches` is true) and write its choice to `out`.

    Returns:
        The chosen trial's `FinetuneSummary`, with `out` and `search` (the trials, the choice, the verdict).

    Raises:
        UsageError: --out holds a run (without --overwrite), OUT.search/ holds another search or an
            interrupted one without --resume, or a trial's own usage error.
    """
    if cfg.recipe == "search" and (cfg.no_val or cfg.keep not in (None, "best")):
        raise UsageError("a recipe search selects on val: --no-val and --keep last need a fixed recipe (give --epochs "
                         "and --lr, or --recipe fixed)")
    check_out(out, overwrite)
    space = Workspace.open(out, cfg, resume=resume, overwrite=overwrite, progress=progress)
    try:
        return _search(space, cfg) if cfg.recipe == "search" else _schedule(space, cfg)
    except Exception:
        space.discard_unless_finished()
        raise


def _search(space: Workspace, cfg: FinetuneConfig) -> FinetuneSummary:
    """One trial per peak learning rate (highest first), each as long as the budget left allows."""
    budget = 60.0 * cfg.budget_minutes
    lrs = (cfg.lr,) if cfg.lr is not None else LR_GRID
    head_only = _head_only_epochs(cfg)
    most = cfg.epochs or TRIAL_EPOCHS + head_only
    fewest = min(most, head_only + MIN_TRIAL_EPOCHS)
    patience = cfg.patience or PATIENCE
    space.say(f"finetune: recipe search within {cfg.budget_minutes:g} min: "
              + (f"peak learning rates {', '.join(f'{lr:g}' for lr in lrs)} in turn, " if len(lrs) > 1 else "")
              + f"up to {most} epochs each (stops after {patience} epochs without a better val), as the budget "
              "allows; every trial keeps its best epoch on val, the start included")
    trials: list[Trial] = []
    for lr in lrs:
        left = dist.from_rank0(budget - _spent(trials), "taking rank 0's budget left")
        epochs = _fitting_epochs(trials, most, left)
        if epochs < fewest:
            why = f"needs about {_estimate(trials, fewest):.0f} s, {max(left, 0):.0f} s of the budget left"
            trial = Trial(_name(lr, most), lr, most, f"skipped: {why}")
            space.say(f"finetune: trial {trial.name} skipped: {why}")
        else:
            trial = space.run(_name(lr, epochs), cfg.fixed(epochs=epochs, lr=lr, patience=patience))
            space.say(_trial_line(trial))
        trials.append(trial)
    return space.finish(best_trial(trials), trials, "search", cfg.budget_minutes)


def _trial_line(trial: Trial) -> str:
    return (f"finetune: trial {trial.name}: val accuracy {percent(trial.val_accuracy)}"
            + (f", val loss {trial.val_loss:.4f}" if trial.val_loss is not None else "") + " (kept "
            + (f"epoch {trial.best_epoch}" if trial.best_epoch else "the start") + f"), {trial.seconds:.0f} s"
            + (" (reused)" if trial.status == "reused" else ""))


def schedule_config(cfg: FinetuneConfig, epochs: int) -> FinetuneConfig:
    """The schedule recipe's run: `epochs` at SCHEDULE_LR, with SCHEDULE_SETTINGS wherever `cfg` holds the
    class default (an option the user gave wins)."""
    settings = {k: v for k, v in SCHEDULE_SETTINGS.items() if getattr(cfg, k) is None}
    return cfg.fixed(epochs=epochs, lr=cfg.lr or SCHEDULE_LR, **settings)


def _schedule(space: Workspace, cfg: FinetuneConfig) -> FinetuneSummary:
    """The default recipe: one run whose length fits the budget (its cost timed before it starts), the start kept
    when the last epoch is not better on val."""
    most = cfg.epochs or SCHEDULE_EPOCHS + _head_only_epochs(cfg)
    epochs, why = _schedule_epochs(space, cfg, most)
    trial_cfg = schedule_config(cfg, epochs)
    space.say(f"finetune: recipe: one run of {epochs} epochs at peak learning rate {trial_cfg.lr:g} ({why}); weight "
              f"decay {trial_cfg.weight_decay:g}, label smoothing {trial_cfg.label_smoothing:g}, crops of "
              f"{trial_cfg.crop_scale:g}-1 of the image; keeps the last epoch unless the start is better on val")
    trial = space.run(_name(trial_cfg.lr, epochs), trial_cfg)
    return space.finish(trial, [trial], "schedule", cfg.budget_minutes)


def _schedule_epochs(space: Workspace, cfg: FinetuneConfig, most: int) -> tuple[int, str]:
    """The epochs of the schedule and why: the most (up to `most`) whose measured cost fits the budget,
    at least MIN_TRIAL_EPOCHS. Measured once and kept in OUT.search/, so --resume trains the same run."""
    path = space.work / SCHEDULE_JSON
    if path.exists():
        kept = json.loads(path.read_text())
        return int(kept["epochs"]), kept["why"]
    began = time.perf_counter()
    measured = cost.measure_cost(schedule_config(cfg, most))
    left = 60.0 * cfg.budget_minutes - (time.perf_counter() - began)
    fits = [e for e in range(1, most + 1) if measured.run_seconds(e) <= left]
    epochs = max(max(fits, default=0), min(most, _head_only_epochs(cfg) + MIN_TRIAL_EPOCHS))
    estimate = measured.run_seconds(epochs)
    why = (f"about {estimate:.0f} s of the {cfg.budget_minutes:g}-minute budget" if estimate <= left else
           f"about {estimate:.0f} s: the fewest epochs te trains, over the {cfg.budget_minutes:g}-minute budget")
    epochs, why = dist.from_rank0((epochs, why), "taking rank 0's epochs for the schedule")
    if space.rank == 0:
        write_json(path, {"epochs": epochs, "why": why, "cost": asdict(measured)})
    return epochs, why


def _head_only_epochs(cfg: FinetuneConfig) -> int:
    """Epochs the strategy trains the head alone before any backbone block (a trial must go past them)."""
    strategy = strategy_name(cfg)
    if strategy == "freeze_unfreeze":
        return cfg.unfreeze_epoch
    if strategy == "unfreeze_milestones" and cfg.milestones:
        return cfg.milestones[0]
    return 0


def _estimate(trials: list[Trial], epochs: int) -> float | None:
    """Seconds a trial of `epochs` would take, from the trials that ran (None before the first)."""
    ran = [t for t in trials if t.ran and t.epochs_run]
    if not ran:
        return None
    fixed = max(t.seconds - t.train_seconds for t in ran)
    per_epoch = max(t.train_seconds / t.epochs_run for t in ran)
    return fixed + 1.1 * per_epoch * epochs  # +10%: each epoch's val evaluation is counted in `fixed` once


def _fitting_epochs(trials: list[Trial], most: int, left: float) -> int:
    """The most epochs (up to `most`) whose estimate fits `left` seconds (all of them before any trial)."""
    if _estimate(trials, 1) is None:
        return most
    fits = [e for e in range(1, most + 1) if _estimate(trials, e) <= left]
    return max(fits, default=0)


def _spent(trials: list[Trial]) -> float:
    return sum(t.seconds for t in trials)


def _name(lr: float, epochs: int) -> str:
    return f"lr{lr:g}-e{epochs}"
