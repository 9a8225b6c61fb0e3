"""The end of a fine-tuning run: final evaluation of the kept weights and the run directory's files."""

from __future__ import annotations

from typing import Any

from transfer_engine.finetune.loop import Evaluation, Trainer
from transfer_engine.runs import METRICS_JSON, MODEL_WEIGHTS, RUN_JSON, HeadRef, RunInfo, RunWriter

CURVE_PNG = "learning_curve.png"  # te train's names: the per-epoch curve here, the matrix of the shown split
CONFUSION_PNG = "confusion_matrix.png"


def evaluate_all(trainer: Trainer, sets: dict, batch_size: int, workers: int, rank: int,
                 world: int) -> dict[str, Evaluation]:
    """Accuracy of the model on every non-empty split (train without augmentation, as te train reports it)."""
    return {s: trainer.evaluate(sets[s], batch_size, workers, rank, world) for s in ("train", "val", "test")
            if len(sets[s])}


def per_class_recall(confusion: list[list[int]], class_names: list[str]) -> dict[str, float | None]:
    """{class name: recall} from a confusion matrix (rows: true class); None for a class with no images."""
    return {name: (row[i] / sum(row) if sum(row) else None)
            for i, (name, row) in enumerate(zip(class_names, confusion))}


def macro_f1(confusion: list[list[int]]) -> float:
    """F1 averaged over the classes present (as true or predicted), as scikit-learn's macro F1."""
    n = len(confusion)
    f1s = []
    for i in range(n):
        support, predicted = sum(confusion[i]), sum(confusion[j][i] for j in range(n))
        if support + predicted:
            f1s.append(2 * confusion[i][i] / (support + predicted))
    return sum(f1s) / len(f1s) if f1s else 0.0


def write_run(writer: RunWriter, start, sets: dict, summary, results: dict[str, Evaluation], state,
              config: dict[str, Any], model, precision_reason: str) -> None:
    """Write model.safetensors, metrics.json, the PNGs and run.json into the staged run directory.

    Args:
        writer: the run's writer (committed by the caller).
        start: the `Start` (provenance).
        sets: the ImageSets per split (their preprocessing is what the model was trained at).
        summary: the FinetuneSummary.
        results: final evaluations per split.
        state: the TrainState (history, before).
        config: the run's configuration (recorded as hyper-parameters).
        model: the Classifier with the kept weights.
        precision_reason: why this precision was used.
    """
    from transfer_engine.finetune.plots import plot_confusion, plot_curve

    history = [record.to_dict() for record in state.history]
    writer.save_tensors(MODEL_WEIGHTS, model.state_dict(), metadata={"format": "pt", "kind": "finetune"})
    shown = "test" if "test" in results else ("val" if "val" in results else "train")
    metrics = {
        "train_accuracy": results["train"].accuracy,
        "val_accuracy": results["val"].accuracy if "val" in results else None,
        "test_accuracy": results["test"].accuracy if "test" in results else None,
        **{f"{s}_loss": e.loss for s, e in results.items()},
        "best_epoch": summary.best_epoch,
        "kept": config["keep"],
        "stopped_early": summary.stopped_early,
        "start_candidate": summary.start_candidate,
        "before": {k: v for k, v in state.before.items() if k != "start_candidate"},
        "parent": summary.parent,
        "epochs": history,
        "per_class_recall": per_class_recall(results[shown].confusion, start.class_names),
        "macro_f1": macro_f1(results[shown].confusion),
        "evaluated_on": shown,
        "confusion": {"split": shown, "matrix": results[shown].confusion},
        "counts": {s: e.count for s, e in results.items()},
        "seconds": summary.seconds,
        "images_per_second": summary.images_per_second,
    }
    writer.write_json(METRICS_JSON, metrics)
    title = f"te finetune {start.backbone.name} + {start.head.name} ({config['strategy']})"
    plot_curve(writer.file(CURVE_PNG), history, state.before, title)
    plot_confusion(writer.file(CONFUSION_PNG), results[shown].confusion, start.class_names,
                   f"{shown} split: {100 * results[shown].accuracy:.1f}% accurate")
    preprocess = sets["train"].preprocess
    info = RunInfo(
        kind="finetune", backbone=start.backbone, preprocess=preprocess.to_dict(),
        head=HeadRef(start.head.name, start.head.in_features, start.head.num_classes, dict(start.head.options),
                     start.head.plugin),
        class_names=list(start.class_names), weights_file=MODEL_WEIGHTS,
        dataset={**start.dataset, "splits": {s: len(sets[s]) for s in ("train", "val", "test") if len(sets[s])}},
        space=None, seed=config["seed"],
        hyperparameters={**{k: v for k, v in config.items() if k not in ("from", "data")},
                         "precision_reason": precision_reason, "best_epoch": summary.best_epoch},
        parent=start.parent)
    writer.write_json(RUN_JSON, info.to_dict())
