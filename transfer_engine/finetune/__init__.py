"""`te finetune`: train backbone and head end to end, warm-started from a `te train` run (LP-FT).

    >>> from transfer_engine.finetune import finetune                                   # doctest: +SKIP
    >>> s = finetune("runs/ft", from_run_dir="runs/linear", epochs=2, input_size=64)    # doctest: +SKIP
    >>> s = finetune("runs/ft2", FinetuneConfig(from_run_dir="runs/linear", epochs=2))  # doctest: +SKIP
    >>> s.before["test_accuracy"], s.test_accuracy                                       # doctest: +SKIP

Modules: strategies (blocks, freeze schedules, layer-wise rates), data (splits, augmentation, samplers),
loop (optimizer step, evaluation), distributed (DDP that follows the strategy), checkpoint (--resume),
start (--from RUN or --backbone/--data/--head), runner (`finetune()`), finish and report (the run files).
"""

from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.finetune.runner import FinetuneSummary, finetune
from transfer_engine.finetune.strategies import STRATEGIES

__all__ = ["STRATEGIES", "FinetuneConfig", "FinetuneSummary", "finetune"]
