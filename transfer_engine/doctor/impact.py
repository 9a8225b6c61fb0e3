"""What the leaked test images do to the numbers: a head's test accuracy with them and without them.

A test image that is a copy (exact or near) of a train or val image measures memory, not generalisation;
the accuracy on the test images that are not copies is the figure to trust. The head is a te train run's
(`--run`, on features of the same space) or te doctor's probe fitted on train+val.
"""

from __future__ import annotations

import numpy as np

from transfer_engine.core.selection import wilson_interval
from transfer_engine.doctor.matrix import BLOCK_ROWS
from transfer_engine.doctor.rows import Rows
from transfer_engine.errors import UsageError


def run_predictions(run_dir: str, rows: Rows, test: np.ndarray) -> tuple[np.ndarray, str]:
    """(predicted labels of the test records, a name for the head) from a te train run's head.

    Raises:
        UsageError: the run was trained on another feature space, or on other class names.
    """
    import torch

    from transfer_engine.runs import Run

    run = Run.open(run_dir)
    space = (run.info.space or {}).get("id")
    if space != rows.space_id:
        raise UsageError(f"--run {run_dir} was trained on feature space {str(space)[:12]}, not on the space te doctor "
                         f"reads ({rows.space_id[:12]}); pass --space {str(space)[:12]} or a run of this space")
    if run.class_names != rows.class_names:
        raise UsageError(f"--run {run_dir} has other classes than data set {rows.dataset!r}; pass a run trained on it")
    head = run.build_head()
    predicted = np.empty(len(test), dtype=np.int64)
    with torch.no_grad():  # a block of test records at a time: their features are read, not held
        for start in range(0, len(test), BLOCK_ROWS):
            block = test[start:start + BLOCK_ROWS]
            predicted[start:start + len(block)] = head(rows.raw(block)).argmax(1).numpy()
    return predicted, f"{run.info.head.name} head of {run_dir}"


def accuracy_with_and_without(rows: Rows, test: np.ndarray, predicted: np.ndarray, leaked: set[int]) -> dict:
    """Test accuracy over every test record, over those not leaked, and over the leaked ones alone (with 95%
    Wilson intervals)."""
    right = predicted == rows.labels[test]
    is_leaked = np.array([r in leaked for r in test.tolist()], dtype=bool)

    def share(mask: np.ndarray) -> dict | None:
        n = int(mask.sum())
        if n == 0:
            return None
        hits = int(right[mask].sum())
        return {"accuracy": hits / n, "interval": list(wilson_interval(hits, n)), "images": n}

    every = np.ones(len(test), dtype=bool)
    return {"all": share(every), "without_leaked": share(~is_leaked), "leaked_only": share(is_leaked),
            "leaked": int(is_leaked.sum())}
