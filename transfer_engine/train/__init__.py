"""`te train`: fit lightweight heads on cached features, with a sweep, and write a run directory.

    >>> from transfer_engine.train import train                                   # doctest: +SKIP
    >>> result = train("feats/", head="linear", out="runs/linear", sweep=True)    # doctest: +SKIP
    >>> result.metrics["test_accuracy"], result.run                               # doctest: +SKIP
    >>> board = train_all("feats/", out="runs/all")                               # best first  # doctest: +SKIP
    >>> cfg = TrainConfig(cache="feats/", head="mlp", sweep=True)                 # doctest: +SKIP
    >>> train(cfg, out="runs/mlp"), train(cfg, seed=1, out="runs/mlp-seed1")      # doctest: +SKIP

Modules: data (splits from the cache, in memory or streamed: `load_training_data`, public because te
compare scores a backbone's cached features as te train sees them), fit (one fit of one head), lbfgs (the
linear head's full-batch solver), sweep (hyper-parameter search on val), metrics, plots, runner (`train`,
`train_all`), probe (`out_of_fold_probabilities`: a head's k-fold predictions, and `GatheredRows`, the
pool given as rows of a matrix already held; public because te doctor judges labels with them). The
configuration is `transfer_engine.core.configs.TrainConfig`.
"""

from transfer_engine.core.configs import TrainConfig
from transfer_engine.train.data import TrainingData, load_training_data
from transfer_engine.train.probe import GatheredRows, OutOfFold, out_of_fold_probabilities
from transfer_engine.train.runner import ALL, LEADERBOARD_JSON, Leaderboard, TrainResult, train, train_all

__all__ = ["ALL", "GatheredRows", "LEADERBOARD_JSON", "Leaderboard", "OutOfFold", "TrainConfig", "TrainResult",
           "TrainingData", "load_training_data", "out_of_fold_probabilities", "train", "train_all"]
