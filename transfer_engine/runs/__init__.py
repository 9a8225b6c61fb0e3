"""Run directories: what `te train` and `te finetune` write and `te export` / `te finetune --from` read.

A run directory is the unit everything after the cache consumes:

    RUN/run.json              provenance: backbone (name, weights, digest), preprocessing, head, classes,
                              data set, feature space, seed, hyper-parameters, library versions
    RUN/metrics.json          train_accuracy, val_accuracy, test_accuracy (null without a test split), ...
    RUN/head.safetensors      the head's weights (a `te train` run)
    RUN/model.safetensors     backbone and head weights (a `te finetune` run: self-contained)
    RUN/*.png                 pictures for people (learning curve, confusion matrix)

Weights are safetensors (no pickle). A run is written into a staging directory beside RUN and renamed into
place only when complete, so a crash or an error never leaves something that looks like a finished run.

    >>> from transfer_engine.runs import Run
    >>> run = Run.open("runs/linear")                      # doctest: +SKIP
    >>> model = run.build_model()                          # backbone + head, eval mode   # doctest: +SKIP
"""

from transfer_engine.runs.format import (
    HEAD_WEIGHTS,
    METRICS_JSON,
    MODEL_WEIGHTS,
    QAT_JSON,
    RUN_FORMAT,
    RUN_JSON,
    RUN_VERSION,
    BackboneRef,
    HeadRef,
    RunInfo,
    library_versions,
)
from transfer_engine.runs.run import Classifier, Run, is_run
from transfer_engine.runs.writer import RunWriter

__all__ = [
    "HEAD_WEIGHTS",
    "METRICS_JSON",
    "MODEL_WEIGHTS",
    "QAT_JSON",
    "RUN_FORMAT",
    "RUN_JSON",
    "RUN_VERSION",
    "BackboneRef",
    "Classifier",
    "HeadRef",
    "Run",
    "RunInfo",
    "RunWriter",
    "is_run",
    "library_versions",
]
