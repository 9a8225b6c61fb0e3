"""Which weights a run keeps, and which trial a search keeps: the one order both use (`better_on_val`).

A run's candidates are the start (epoch 0) and its epochs (`--keep best`: the best on val; `--keep final`:
the start or the last epoch, `start_or_last`); --patience counts from the best trained epoch
(`epochs_since_best_trained`); a search keeps the trial best by the same order (`best_trial`).
"""

from __future__ import annotations

from typing import Protocol, Sequence

from transfer_engine.finetune.records import Candidate, EpochRecord, Trial

VAL_LOSS_MIN_DELTA = 1e-4  # mean cross-entropy: a smaller fall of the val loss does not break a tie


class OnVal(Protocol):
    """Anything measured on val: an EpochRecord, a Candidate, a Trial."""

    @property
    def val_accuracy(self) -> float | None: ...

    @property
    def val_loss(self) -> float | None: ...


def better_on_val(candidate: OnVal, best: OnVal | None) -> bool:
    """Whether `candidate` beats `best` on val: higher accuracy, or the same accuracy at a lower val loss.

    None (not measured) never beats; anything measured beats a None `best` or one without val accuracy.
    The loss breaks ties because a small val saturates: its accuracy can stay put over several epochs
    while the val loss falls and test accuracy rises, and keeping the earlier on every tie threw that away
    (the run: docs/finetune.md, "The recipe: searched on val, within a budget"). A tie on both
    keeps the earlier, cheaper one; so does a loss lower by less than VAL_LOSS_MIN_DELTA (rounding, not
    progress: lr 1e-12 moves a zero BatchNorm shift and the loss's last bits, nothing else).
    """
    if candidate.val_accuracy is None:
        return False
    if best is None or best.val_accuracy is None or candidate.val_accuracy != best.val_accuracy:
        return best is None or best.val_accuracy is None or candidate.val_accuracy > best.val_accuracy
    return (candidate.val_loss is not None and best.val_loss is not None
            and candidate.val_loss < best.val_loss - VAL_LOSS_MIN_DELTA)


def start_or_last(start: Candidate, history: Sequence[EpochRecord]) -> Candidate:
    """--keep final's choice: the last epoch, unless the start is better on val (`better_on_val`).

    `start` carries the start's own val figures even where its head saw val (te train --sweep refits on
    train+val): its val accuracy is optimistic then, so the last epoch must beat an optimistic bar to
    replace it, which keeps a run that wrecked the start from being written (the conservative side).
    Without val, the last.
    """
    if not history or (start.val_accuracy is not None and better_on_val(start, history[-1])):
        return start
    return Candidate.of(history[-1])


def epochs_since_best_trained(history: Sequence[EpochRecord]) -> int | None:
    """Epochs since the best trained epoch on val (by `better_on_val`), or None when nothing is measured."""
    best: EpochRecord | None = None
    for record in history:
        if better_on_val(record, best):
            best = record
    return None if best is None else history[-1].epoch - best.epoch


def best_trial(trials: Sequence[Trial]) -> Trial | None:
    """The trial that ran and is best by `better_on_val` (val accuracy, then val loss; the first on a tie)."""
    best = None
    for trial in trials:
        if trial.ran and (best is None or better_on_val(trial, best)):
            best = trial
    return best
