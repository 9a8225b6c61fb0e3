"""`--sweep`: choose a head's hyper-parameters on the val split, coarse then refined.

Every trial fits on train and is judged on val (accuracy first; see `Trial.score` for ties). What is
searched:

- lbfgs heads (linear): weight decay over decades 1e-1 .. 1e-6, strongest first, each fit warm-started
  from the previous solution (the regularization path), then 4 points at thirds of a decade around the
  best, warm-started from it;
- other gradient heads: the learning rate at {0.3, 1, 3} x the default, then weight decay over
  {0.01, 0.1, 1, 10} x the default at the best learning rate, then half a decade either side of the best;
- the head's declared `search` options (knn: k) on a grid first, then, for integer options, the
  geometric midpoints between the best value and its grid neighbours.

With a `FoldPlan` (k-fold selection, `core.selection`: small data under --select auto), the search
above only finds the finalists: the `FINALISTS` best distinct settings on val are each cross-validated
over train+val, and the best pooled out-of-fold accuracy wins (ties as on val). The in-memory linear
head's fits take a fraction of a second, so every one of its settings is a finalist (as scikit-learn's
LogisticRegressionCV cross-validates its whole grid): which three settings lead on a few hundred val
images turns on an image or two, and features a rounding apart then got settings a point of k-fold
accuracy apart. Val alone decides otherwise. The winner is refitted on train+val by the caller
(`runner`); its val accuracy stays the held-out one.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from transfer_engine.core.format import percent, percent_interval
from transfer_engine.core.progress import Say
from transfer_engine.train.crossval import FoldPlan, FoldScore, cross_validate
from transfer_engine.train.fit import Fitted, HyperParameters, TrainingDiverged, fit_head
from transfer_engine.train.metrics import Evaluation, evaluate

if TYPE_CHECKING:
    from transfer_engine.heads import HeadSpec
    from transfer_engine.train.data import TrainingData

LBFGS_DECAYS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
LBFGS_REFINE = (10 ** (-2 / 3), 10 ** (-1 / 3), 10 ** (1 / 3), 10 ** (2 / 3))
LR_FACTORS = (0.3, 1.0, 3.0)
DECAY_FACTORS = (0.01, 0.1, 1.0, 10.0)
DECAY_REFINE = (10 ** -0.5, 10 ** 0.5)
# Settings cross-validated under k-fold selection: the best few on val. Each costs k fits, and on val the
# settings beyond the first few are rarely close to the best (docs/train.md, "Choosing on small data").
# The in-memory linear head cross-validates all of them (see the module docstring).
FINALISTS = 3


@dataclass
class Trial:
    """One fit on train, judged on val."""

    stage: str
    hp: HyperParameters
    val: Evaluation | None
    fitted: Fitted | None
    seconds: float
    error: str | None = None
    kfold: FoldScore | None = None  # its cross-validation, when it was a finalist

    def score(self, prefer_strong_decay: bool = False) -> tuple[float, float]:
        """Val accuracy first; among equals, the lower val loss, or (L-BFGS sweeps) the stronger weight
        decay: warm-started fits that stop as soon as the gradient test passes differ in val loss by
        where they stopped more than by their decay, and with no held-out evidence either way the more
        regularized head is the safer choice."""
        if self.val is None:
            return (-1.0, 0.0)
        if prefer_strong_decay:
            return (self.val.accuracy, self.hp.weight_decay)
        return (self.val.accuracy, -self.val.loss if math.isfinite(self.val.loss) else -math.inf)

    def kfold_score(self, prefer_strong_decay: bool = False) -> tuple[float, float]:
        """As `score`, on the pooled out-of-fold predictions (finalists only)."""
        if self.kfold is None:
            return (-1.0, 0.0)
        if prefer_strong_decay:
            return (self.kfold.score.accuracy, self.hp.weight_decay)
        return (self.kfold.score.accuracy, -self.kfold.loss if math.isfinite(self.kfold.loss) else -math.inf)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "weight_decay": self.hp.weight_decay, "lr": self.hp.lr,
                "options": dict(self.hp.options),
                "val_accuracy": self.val.accuracy if self.val else None,
                "val_loss": self.val.loss if self.val and math.isfinite(self.val.loss) else None,
                "kfold_accuracy": self.kfold.score.accuracy if self.kfold else None,
                "kfold_interval": list(self.kfold.score.interval) if self.kfold else None,
                "seconds": round(self.seconds + (self.kfold.seconds if self.kfold else 0.0), 3), "error": self.error}


@dataclass
class SweepResult:
    """The trials and the best one (`selected_by`: "val", or "kfold" when finalists were cross-validated)."""

    best: Trial
    trials: list[Trial] = field(default_factory=list)
    selected_by: str = "val"

    def to_list(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.trials]


class _Search:
    def __init__(self, spec: "HeadSpec", data: "TrainingData", seed: int, device: torch.device | None,
                 say: Say | None) -> None:
        self.spec, self.data, self.seed, self.device, self.say = spec, data, seed, device, say
        # the in-memory linear head: its L-BFGS fits take a fraction of a second (the regularization path, every
        # setting a finalist), and among equals the stronger weight decay is preferred
        self.lbfgs_in_memory = spec.trainable and spec.solver == "lbfgs" and data.in_memory
        self.trials: list[Trial] = []
        self._seen: dict[str, Trial] = {}

    def run(self, stage: str, hp: HyperParameters, warm: Any = None) -> Trial:
        key = repr((hp.weight_decay, hp.lr, sorted(hp.options.items())))
        if key in self._seen:
            return self._seen[key]
        start = time.perf_counter()
        try:
            fitted = fit_head(self.spec, self.data, self.data.splits["train"], hp, seed=self.seed, device=self.device,
                              val=self.data.splits["val"], warm=warm)
            val = evaluate(fitted.module, self.data, self.data.splits["val"])
            trial = Trial(stage, hp, val, fitted, time.perf_counter() - start)
        except TrainingDiverged as exc:
            trial = Trial(stage, hp, None, None, time.perf_counter() - start, error=str(exc))
        self.trials.append(trial)
        self._seen[key] = trial
        if self.say is not None:
            what = ", ".join(_describe(hp, self.spec))
            result = f"val accuracy {percent(trial.val.accuracy)}" if trial.val else f"failed: {trial.error}"
            self.say(f"  sweep {self.spec.name} [{stage}] {what}: {result} ({trial.seconds:.1f} s)")
        return trial

    def best(self, trials: list[Trial] | None = None) -> Trial:
        pool = self.trials if trials is None else trials
        return max(pool, key=lambda t: t.score(self.lbfgs_in_memory))  # the first of exact equals


def run_sweep(spec: "HeadSpec", data: "TrainingData", base: HyperParameters, *, seed: int = 0,
              device: torch.device | None = None, fixed_lr: bool = False,
              say: Say | None = None, folds: FoldPlan | None = None) -> SweepResult:
    """Search the head's hyper-parameters on val, and choose among the finalists by k-fold when `folds` is
    given (see the module docstring).

    Args:
        spec: the head.
        data: the splits (train and val are used).
        base: the starting point (defaults, with what the user fixed).
        seed: the seed of every trial (trials differ only in their hyper-parameters).
        device: where to compute.
        fixed_lr: keep `base.lr` (the user gave --lr).
        say: a function taking a progress line, or None.
        folds: the k-fold plan of k-fold selection; None selects on val.

    Returns:
        The `SweepResult`; `best.fitted` is the winning fit on train (`best.kfold` its k-fold score).
    """
    search = _Search(spec, data, seed, device, say)
    hp = _search_options(search, base) if spec.search else base
    if search.lbfgs_in_memory:
        _search_lbfgs_decay(search, hp)
    elif spec.trainable:
        _search_lr_and_decay(search, hp, fixed_lr)
    best = search.best()
    if best.fitted is None:
        raise TrainingDiverged(f"every sweep trial of head {spec.name!r} failed; first: {search.trials[0].error}")
    if folds is not None:
        best = _cross_validate_finalists(search, folds)
    if search.trials.index(best) > 0:  # started from an earlier trial's solution
        best = _from_scratch(search, best)
    return SweepResult(best, search.trials, "kfold" if folds is not None else "val")


def _cross_validate_finalists(search: _Search, folds: FoldPlan) -> Trial:
    """The best of the finalists by k-fold: the `FINALISTS` best settings on val, or every setting of the
    in-memory linear head. A finalist whose folds diverge is out. Each finalist's fold fits start from the
    previous finalist's fits on the same fold (never from a fit that saw the fold: see `cross_validate`)."""
    ranked = sorted((t for t in search.trials if t.fitted is not None),
                    key=lambda t: t.score(search.lbfgs_in_memory), reverse=True)
    ranked = ranked if search.lbfgs_in_memory else ranked[:FINALISTS]
    warm = None
    for trial in ranked:
        try:
            trial.kfold = cross_validate(search.spec, search.data, trial.hp, folds, seed=search.seed,
                                         device=search.device, warm=warm)
        except TrainingDiverged:
            continue
        warm = trial.kfold.warm if any(w is not None for w in trial.kfold.warm) else None
        if search.say is not None:
            search.say(f"  sweep {search.spec.name} [{folds.k}-fold] {', '.join(_describe(trial.hp, search.spec))}: "
                       f"accuracy {percent_interval(trial.kfold.score.accuracy, trial.kfold.score.interval)} "
                       f"({trial.kfold.seconds:.1f} s)")
    judged = [t for t in ranked if t.kfold is not None]
    if not judged:
        raise TrainingDiverged(f"every {folds.k}-fold fit of head {search.spec.name!r}'s finalists diverged")
    return max(judged, key=lambda t: t.kfold_score(search.lbfgs_in_memory))  # the first of exact equals


def _from_scratch(search: _Search, best: Trial) -> Trial:
    """The winner of a warm-started path, fitted again from zero: its learning curve then shows a whole
    fit, and the head that is refitted on train+val does not depend on the path that found it."""
    if best.fitted is None or best.fitted.warm is None:
        return best
    start = time.perf_counter()
    fitted = fit_head(search.spec, search.data, search.data.splits["train"], best.hp, seed=search.seed,
                      device=search.device, val=search.data.splits["val"])
    val = evaluate(fitted.module, search.data, search.data.splits["val"])
    if search.say is not None:
        search.say(f"  sweep {search.spec.name} [chosen, from scratch] {', '.join(_describe(best.hp, search.spec))}: "
                   f"val accuracy {percent(val.accuracy)}")
    return Trial(best.stage, best.hp, val, fitted, best.seconds + time.perf_counter() - start, kfold=best.kfold)


def _search_options(search: _Search, base: HyperParameters) -> HyperParameters:
    grid = search.spec.search
    names = sorted(grid)
    coarse = [search.run("options", base.replace(options={**base.options, **dict(zip(names, values))}))
              for values in itertools.product(*(grid[n] for n in names))]
    best = search.best(coarse)
    refined = []
    for name in names:
        values = sorted(grid[name])
        chosen = best.hp.options[name]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values) or chosen not in values:
            continue
        at = values.index(chosen)
        for neighbour in values[max(0, at - 1):at] + values[at + 1:at + 2]:
            middle = round(math.sqrt(max(neighbour, 1) * max(chosen, 1)))
            if middle not in values:
                refined.append(search.run("options refined", best.hp.replace(options={**best.hp.options,
                                                                                       name: middle})))
    return search.best(coarse + refined).hp


def _search_lbfgs_decay(search: _Search, base: HyperParameters) -> None:
    warm = None
    coarse = []
    for decay in LBFGS_DECAYS:
        trial = search.run("coarse", base.replace(weight_decay=decay), warm)
        coarse.append(trial)
        warm = trial.fitted.warm if trial.fitted is not None else warm
    best = search.best(coarse)
    for factor in LBFGS_REFINE:
        search.run("refined", base.replace(weight_decay=best.hp.weight_decay * factor),
                   best.fitted.warm if best.fitted is not None else None)


def _search_lr_and_decay(search: _Search, base: HyperParameters, fixed_lr: bool) -> None:
    lrs = [base.lr] if fixed_lr else [base.lr * f for f in LR_FACTORS]
    stage_lr = [search.run("coarse lr", base.replace(lr=lr)) for lr in lrs]
    lr = search.best(stage_lr).hp.lr
    anchor = base.weight_decay if base.weight_decay > 0 else 1e-4
    stage_decay = [search.run("coarse weight decay", base.replace(lr=lr, weight_decay=anchor * f))
                   for f in DECAY_FACTORS]
    best = search.best(stage_lr + stage_decay)
    for factor in DECAY_REFINE:
        search.run("refined", best.hp.replace(weight_decay=best.hp.weight_decay * factor))


def _describe(hp: HyperParameters, spec: "HeadSpec") -> list[str]:
    parts = [f"{k}={v}" for k, v in sorted(hp.options.items()) if k in spec.search]
    if spec.trainable:
        parts.append(f"weight_decay={hp.weight_decay:.3g}")
        if spec.solver != "lbfgs":
            parts.append(f"lr={hp.lr:.3g}")
    return parts
