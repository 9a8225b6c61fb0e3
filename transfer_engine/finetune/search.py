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

Every trial is an ordinary fixed-recipe `finetune()` from the same start, so each keeps its best epoch on
val (`runner.better_on_val`: accuracy, then val loss) with the start itself as a candidate (epoch 0). The
search keeps the trial best by the same order (the earlier one on a tie), so the run never ends below the
start on val; when no trial beat the start, it says plainly that fine-tuning did not pay and writes the
start.

The budget (`--budget MINUTES`) bounds the wall clock of the trials: a trial runs with the epochs whose
estimate (from the trials before it: set-up and evaluation time plus training time per epoch) fits what
is left, and is skipped when fewer than MIN_TRIAL_EPOCHS fit; the first trial always runs. Trials live in
OUT.search/ (each a run directory, plus trials.json) until the chosen one becomes OUT; a killed search
continues with `--resume` (finished trials are reused, the interrupted one resumes from its checkpoint).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from transfer_engine._durable import write_durably
from transfer_engine.core.configs import SCHEDULE_EPOCHS, SCHEDULE_LR, SCHEDULE_SETTINGS, FinetuneConfig
from transfer_engine.errors import UsageError
from transfer_engine.finetune import distributed as dist
from transfer_engine.runs import METRICS_JSON, RUN_JSON
from transfer_engine.runs.writer import check_out

LR_GRID = (3e-4, 1e-4, 3e-5)  # tried in this order (why: the module's docstring)
SCHEDULE_JSON = "schedule.json"
TRIAL_EPOCHS = 6
MIN_TRIAL_EPOCHS = 2  # fewer trained epochs than this only measure the dip below the start
PATIENCE = 2
TRIALS_JSON = "trials.json"
PLAN_JSON = "plan.json"


@dataclass
class Trial:
    """One trial of the search, as printed and recorded in metrics.json["search"]["trials"].

    Attributes:
        name: e.g. "lr0.0003-e1".
        lr: its peak learning rate.
        epochs: the epochs it was given.
        status: "done", "stopped early" (patience), "reused" (from an interrupted search), or
            "skipped: ..." (did not fit the budget; nothing below is set then).
        best_epoch: the epoch it kept (0: the start beat every epoch).
        epochs_run: the epochs it trained.
        val_accuracy, test_accuracy: of the weights it kept.
        seconds: its wall clock (set-up, training, evaluation).
        train_seconds: of which training steps.
        val_loss: of the weights it kept (breaks ties of val accuracy between trials).
    """

    name: str
    lr: float
    epochs: int
    status: str
    best_epoch: int | None = None
    epochs_run: int = 0
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0
    val_loss: float | None = None

    @property
    def ran(self) -> bool:
        return not self.status.startswith("skipped")


def search_dir(out: Path) -> Path:
    """Where the trials of the search for run `out` live: `out` + ".search", beside it."""
    return out.parent / f"{out.name}.search"


def search(out: Path, cfg: FinetuneConfig, *, resume: bool, overwrite: bool, progress: bool):
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
    rank, _ = dist.rank_and_world()
    work = search_dir(out)
    plan = {"config": _jsonable(asdict(cfg))}
    done = _prepare(work, plan, resume, overwrite) if rank == 0 else {}
    done = dist.all_gather_object(done)[0]
    dist.barrier()
    try:
        recipe = _search if cfg.recipe == "search" else _schedule
        return recipe(out, work, cfg, done, resume, overwrite, progress, rank)
    except Exception:
        # An error before any trial finished (a bad --from, a usage error of the first trial) leaves nothing
        # behind; once trials have finished they stay for --resume (so does an interrupted search).
        if rank == 0 and not done and work.exists():
            shutil.rmtree(work, ignore_errors=True)
        raise


def _search(out: Path, work: Path, cfg: FinetuneConfig, done: dict, resume: bool, overwrite: bool,
            progress: bool, rank: int):
    budget = 60.0 * cfg.budget_minutes
    say = _say(progress and rank == 0)
    lrs = (cfg.lr,) if cfg.lr is not None else LR_GRID
    head_only = _head_only_epochs(cfg)
    most = cfg.epochs or TRIAL_EPOCHS + head_only
    patience = cfg.patience or PATIENCE
    say(f"finetune: recipe search within {cfg.budget_minutes:g} min: "
        + (f"peak learning rates {', '.join(f'{lr:g}' for lr in lrs)} in turn, " if len(lrs) > 1 else "")
        + f"up to {most} epochs each (stops after {patience} epochs without a better val), as the budget allows; "
        "every trial keeps its best epoch on val, the start included")
    trials: list[Trial] = []
    summaries: dict = {}

    def run(name: str, lr: float, epochs: int, patience: int) -> None:
        trial, summaries[name] = _run_trial(work, name, cfg.fixed(epochs=epochs, lr=lr, patience=patience), done,
                                            resume, progress, rank)
        trials.append(trial)
        say(f"finetune: trial {name}: val accuracy {_pct(trial.val_accuracy)}"
            + (f", val loss {trial.val_loss:.4f}" if trial.val_loss is not None else "") + " (kept "
            + (f"epoch {trial.best_epoch}" if trial.best_epoch else "the start") + f"), {trial.seconds:.0f} s"
            + (" (reused)" if trial.status == "reused" else ""))

    def skip(name: str, lr: float, epochs: int, why: str) -> None:
        trials.append(Trial(name, lr, epochs, f"skipped: {why}"))
        say(f"finetune: trial {name} skipped: {why}")

    for lr in lrs:
        left = dist.all_gather_object(budget - _spent(trials))[0]
        epochs = _fitting_epochs(trials, most, left)
        if epochs < min(most, head_only + MIN_TRIAL_EPOCHS):
            need = _estimate(trials, min(most, head_only + MIN_TRIAL_EPOCHS))
            skip(_name(lr, most), lr, most, f"needs about {need:.0f} s, {max(left, 0):.0f} s of the budget left")
        else:
            run(_name(lr, epochs), lr, epochs, patience)

    chosen = _best(trials)
    return _finish(out, work, chosen, trials, summaries, cfg, overwrite, say, rank)


def schedule_config(cfg: FinetuneConfig, epochs: int) -> FinetuneConfig:
    """The schedule recipe's run: `epochs` at SCHEDULE_LR, with SCHEDULE_SETTINGS wherever `cfg` holds the
    class default (an option the user gave wins)."""
    settings = {k: v for k, v in SCHEDULE_SETTINGS.items() if getattr(cfg, k) is None}
    return cfg.fixed(epochs=epochs, lr=cfg.lr or SCHEDULE_LR, **settings)


def _run_trial(work: Path, name: str, trial_cfg: FinetuneConfig, done: dict, resume: bool, progress: bool,
               rank: int) -> tuple[Trial, object]:
    """Train the trial `name` (a fixed-recipe run in OUT.search/NAME), or reuse it when an interrupted search
    finished it already; records it in trials.json. Returns the Trial and its FinetuneSummary (None: reused)."""
    from transfer_engine.finetune.runner import finetune

    if name in done:
        return Trial(**{**done[name], "status": "reused"}), None
    began = time.perf_counter()
    s = finetune(work / name, trial_cfg, resume=resume, progress=progress)
    trial = Trial(name, trial_cfg.lr, trial_cfg.epochs, "stopped early" if s.stopped_early else "done", s.best_epoch,
                  len(s.history), s.val_accuracy, s.test_accuracy, round(time.perf_counter() - began, 3), s.seconds,
                  s.val_loss)
    if rank == 0:
        done[name] = asdict(trial)
        _write_json(work / TRIALS_JSON, done)
    return trial, s


def _schedule(out: Path, work: Path, cfg: FinetuneConfig, done: dict, resume: bool, overwrite: bool,
              progress: bool, rank: int):
    """The default recipe: one run whose length fits the budget (its cost timed before it starts), the start kept
    when the last epoch is not better on val."""
    say = _say(progress and rank == 0)
    most = cfg.epochs or SCHEDULE_EPOCHS + _head_only_epochs(cfg)
    epochs, why = _schedule_epochs(work, cfg, most, rank)
    trial_cfg = schedule_config(cfg, epochs)
    name = _name(trial_cfg.lr, epochs)
    say(f"finetune: recipe: one run of {epochs} epochs at peak learning rate {trial_cfg.lr:g} ({why}); weight decay "
        f"{trial_cfg.weight_decay:g}, label smoothing {trial_cfg.label_smoothing:g}, crops of {trial_cfg.crop_scale:g}"
        "-1 of the image; keeps the last epoch unless the start is better on val")
    trial, summary = _run_trial(work, name, trial_cfg, done, resume, progress, rank)
    return _finish(out, work, trial, [trial], {name: summary}, cfg, overwrite, say, rank)


def _schedule_epochs(work: Path, cfg: FinetuneConfig, most: int, rank: int) -> tuple[int, str]:
    """The epochs of the schedule and why: the most (up to `most`) whose measured cost fits the budget,
    at least MIN_TRIAL_EPOCHS. Measured once and kept in OUT.search/, so --resume trains the same run."""
    from transfer_engine.finetune.runner import measure_cost

    path = work / SCHEDULE_JSON
    if path.exists():
        kept = json.loads(path.read_text())
        return int(kept["epochs"]), kept["why"]
    began = time.perf_counter()
    cost = measure_cost(schedule_config(cfg, most))
    left = 60.0 * cfg.budget_minutes - (time.perf_counter() - began)
    fits = [e for e in range(1, most + 1) if cost.run_seconds(e) <= left]
    epochs = max(max(fits, default=0), min(most, _head_only_epochs(cfg) + MIN_TRIAL_EPOCHS))
    estimate = cost.run_seconds(epochs)
    why = (f"about {estimate:.0f} s of the {cfg.budget_minutes:g}-minute budget" if estimate <= left else
           f"about {estimate:.0f} s: the fewest epochs te trains, over the {cfg.budget_minutes:g}-minute budget")
    epochs, why = dist.all_gather_object((epochs, why))[0]
    if rank == 0:
        _write_json(path, {"epochs": epochs, "why": why, "cost": asdict(cost)})
    return epochs, why


def _finish(out: Path, work: Path, chosen: Trial, trials: list[Trial], summaries: dict, cfg: FinetuneConfig,
            overwrite: bool, say, rank: int):
    """Write the chosen trial's run as `out` (with the search in its metrics.json), remove OUT.search/."""
    source = work / chosen.name
    files = ({name: json.loads((source / name).read_text()) for name in (METRICS_JSON, RUN_JSON)} if rank == 0
             else {})
    files = dist.all_gather_object(files)[0]
    metrics = files[METRICS_JSON]
    start_val = (metrics.get("before") or {}).get("val_accuracy")
    held_out = (metrics.get("parent") or {}).get("val_accuracy")
    start_saw_val = not metrics.get("start_candidate", True)
    if start_saw_val and not chosen.best_epoch:
        paid = False
        verdict = (f"fine-tuning did not reach the start's val accuracy ({_pct(start_val)}, optimistic: the --from "
                   "head was refitted on train+val), so the run holds the starting model")
    elif start_saw_val:
        paid = None
        verdict = (f"val cannot say whether fine-tuning paid: the --from head was refitted on train+val (te train "
                   f"--sweep); its held-out val accuracy was {_pct(held_out)}, the chosen trial {chosen.name} reached "
                   f"{_pct(chosen.val_accuracy)} on a val its head has seen; compare the test accuracies")
    elif chosen.best_epoch:
        paid = True
        verdict = (f"fine-tuning paid: {chosen.name} reached val accuracy {_pct(chosen.val_accuracy)} against "
                   f"{_pct(start_val)} at the start")
    else:
        paid = False
        verdict = (f"fine-tuning did not pay on this data: no trial beat the start on val ({_pct(start_val)}); "
                   "the run holds the starting model")
    total = round(sum(t.seconds for t in trials), 3)
    record = {"recipe": "search" if cfg.recipe == "search" else "schedule", "budget_minutes": cfg.budget_minutes,
              "seconds": total, "chosen": chosen.name, "paid": paid,
              "start_val_accuracy": start_val, "verdict": verdict, "trials": [asdict(t) for t in trials]}
    say(f"finetune: search: {verdict} ({len([t for t in trials if t.ran])} trials, {total:.0f} s)")
    if rank == 0:
        from transfer_engine.runs import RunWriter

        writer = RunWriter(out, overwrite=overwrite)
        try:
            for item in source.iterdir():
                shutil.move(str(item), str(writer.file(item.name)))
            writer.write_json(METRICS_JSON, {**metrics, "search": record})
            writer.commit()
        except BaseException:
            writer.abort()
            raise
        shutil.rmtree(work, ignore_errors=True)
    dist.barrier()
    summary = summaries.get(chosen.name) or _summary_from_run(files, chosen)
    return replace(summary, out=str(out), search=record)


def _prepare(work: Path, plan: dict, resume: bool, overwrite: bool) -> dict:
    """Create OUT.search/ (or take it up again under --resume); returns the trials already finished."""
    if work.exists():
        try:
            old = json.loads((work / PLAN_JSON).read_text())
        except (OSError, ValueError):
            old = None
        if overwrite and not resume:
            shutil.rmtree(work)
        elif not resume:
            raise UsageError(f"{work} holds an interrupted recipe search; pass --resume to continue it or --overwrite "
                             "to start over")
        elif old != plan:
            raise UsageError(f"{work} holds a recipe search with other settings; --resume continues a search only "
                             "with the same options (or pass --overwrite without --resume to start over)")
        else:
            try:
                return json.loads((work / TRIALS_JSON).read_text())
            except (OSError, ValueError):
                return {}
    work.mkdir(parents=True, exist_ok=True)
    _write_json(work / PLAN_JSON, plan)
    return {}


def _head_only_epochs(cfg: FinetuneConfig) -> int:
    """Epochs the strategy trains the head alone before any backbone block (a trial must go past them)."""
    strategy = cfg.strategy or ("no_freeze" if cfg.from_run_dir is not None else "freeze_unfreeze")
    if strategy == "freeze_unfreeze":
        return cfg.unfreeze_epoch
    if strategy == "unfreeze_milestones" and cfg.milestones:
        return cfg.milestones[0]
    return 0


def _write_json(path: Path, obj) -> None:
    text = json.dumps(obj, indent=2)
    write_durably(path, lambda tmp: tmp.write_text(text))


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


def _best(trials: list[Trial]) -> Trial:
    """The trial that ran and is best by `runner.better_on_val` (val accuracy, then val loss; the first on a tie)."""
    from transfer_engine.finetune.runner import better_on_val

    best = None
    for trial in trials:
        if trial.ran and (best is None or better_on_val(asdict(trial), asdict(best))):
            best = trial
    return best


def _name(lr: float, epochs: int) -> str:
    return f"lr{lr:g}-e{epochs}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _jsonable(value):
    """The config as JSON would read it back (tuples as lists), so a stored plan compares equal."""
    return json.loads(json.dumps(value, default=str))


def _summary_from_run(files: dict, trial: Trial):
    """The FinetuneSummary of a trial reused from an interrupted search, from its metrics.json and run.json."""
    from transfer_engine.finetune.runner import FinetuneSummary

    m, info = files[METRICS_JSON], files[RUN_JSON]
    hp = info["hyperparameters"]
    return FinetuneSummary(
        out="", train_accuracy=m["train_accuracy"], val_accuracy=m["val_accuracy"], test_accuracy=m["test_accuracy"],
        before={k: v for k, v in (m.get("before") or {}).items() if k.endswith("accuracy")}, parent=m.get("parent"),
        best_epoch=m["best_epoch"], epochs=trial.epochs, strategy=hp["strategy"], backbone=info["backbone"]["name"],
        head=info["head"]["name"], input_size=hp["input_size"], precision=hp["precision"], device=hp["device_type"],
        world_size=hp["world_size"], resumed=True, seconds=m["seconds"], images_per_second=m["images_per_second"],
        history=m["epochs"], stopped_early=m.get("stopped_early", False), start_candidate=m.get("start_candidate", True))


def _say(enabled: bool):
    def say(text: str) -> None:
        if enabled:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
    return say
