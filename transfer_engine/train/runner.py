"""`train()`: fit a head (or every head) on cached features and write a run directory.

    RUN/head.safetensors   the head's tensors (create_head(name, D, C, **options).load_state_dict(...))
    RUN/run.json           backbone and weights, feature space, preprocessing, classes, head, seed, versions
    RUN/metrics.json       train/val/test accuracy, per-class recall, macro F1, hyper-parameters, seconds
    RUN/learning_curve.png, RUN/confusion_matrix.png, RUN/sweep.png (with --sweep)

The run is staged by `RunWriter` (constructed before any work, so a bad --out fails at once) and
appears only when complete. `head="all"` writes OUT/<head>/ per head and OUT/leaderboard.json last.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from transfer_engine._durable import write_text_durably
from transfer_engine.core.configs import ALL_HEADS as ALL
from transfer_engine.core.configs import TrainConfig
from transfer_engine.core.format import percent
from transfer_engine.core.progress import Progress, Say, say_of
from transfer_engine.core.runtime import resolve_device
from transfer_engine.core.selection import CrossValidated, resolve_selection
from transfer_engine.errors import TEError, UsageError
from transfer_engine.runs import HEAD_WEIGHTS, METRICS_JSON, RUN_JSON, BackboneRef, HeadRef, RunInfo, RunWriter
from transfer_engine.runs.format import FITTED_ON_TRAIN_VAL, UNRECORDED_WEIGHTS
from transfer_engine.runs.writer import check_out
from transfer_engine.train import plots
from transfer_engine.train.crossval import POOLED, FoldPlan, FoldScore, cross_validate
from transfer_engine.train.data import TrainingData, load_training_data
from transfer_engine.train.fit import Fitted, HyperParameters, default_hyperparameters, fit_head
from transfer_engine.train.metrics import Evaluation, evaluate
from transfer_engine.train.sweep import SweepResult, run_sweep

LEADERBOARD_JSON = "leaderboard.json"


@dataclass
class TrainResult:
    """One trained head.

    Attributes:
        head: the head's name.
        run: the run directory.
        metrics: what metrics.json holds (and `te train --json` prints).
    """

    head: str
    run: Path
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.metrics)


class Leaderboard(list):
    """`train(head="all")`: the `TrainResult`s, best first by k-fold accuracy (k-fold selection) or val
    accuracy.

    Attributes:
        out: the directory holding one run per head and leaderboard.json.
        failed: [{"head", "error"}] for heads that could not be trained.
    """

    def __init__(self, results: list[TrainResult], out: Path, failed: list[dict[str, str]]) -> None:
        super().__init__(results)
        self.out = out
        self.failed = failed

    @property
    def best(self) -> TrainResult | None:
        return self[0] if self else None

    @property
    def selected_by(self) -> str:
        """"kfold" when every head has a k-fold score (they are ranked by it), else "val"."""
        return "kfold" if self and all(r.metrics.get("kfold") for r in self) else "val"

    def tied_with_best(self) -> list[str]:
        """The heads the k-fold's pooled images cannot tell from the best (paired; empty on val)."""
        if self.selected_by != "kfold":
            return []
        best = CrossValidated.from_dict(self[0].metrics["kfold"])
        return [r.head for r in self[1:] if best.within_noise(CrossValidated.from_dict(r.metrics["kfold"]))]

    def to_dict(self) -> dict[str, Any]:
        tied = set(self.tied_with_best())
        rows = [{"rank": i + 1, "head": r.head, "kfold_accuracy": (r.metrics.get("kfold") or {}).get("accuracy"),
                 "kfold_interval": (r.metrics.get("kfold") or {}).get("interval"),
                 "within_noise_of_best": (r.head in tied) if self.selected_by == "kfold" and i else None,
                 "val_accuracy": r.metrics["val_accuracy"],
                 "test_accuracy": r.metrics["test_accuracy"], "train_accuracy": r.metrics["train_accuracy"],
                 "macro_f1": r.metrics["macro_f1"], "seconds": r.metrics["seconds"], "run": str(r.run)}
                for i, r in enumerate(self)]
        return {"best": self[0].head if self else None, "selected_by": self.selected_by, "leaderboard": rows,
                "failed": list(self.failed), "out": str(self.out)}


def train(cache: "str | os.PathLike | TrainConfig", head: str | None = None, out: str | os.PathLike = "run", *,
          overwrite: bool = False, progress: Progress = True, **fields: Any) -> TrainResult:
    """Fit one head on the cached features of a data set and write the run directory `out`.

    Trains on the train split, selects on val, reports test when the data set has one.

    Args:
        cache: the feature cache directory, or a whole `core.configs.TrainConfig` (whose docstring
            describes every field: dataset, backbone, space, epochs, lr, weight_decay, sweep, batch_size,
            options, device, seed, memory_budget, given here as keywords `fields`, which also override
            those of a config given).
        head: a head name (`te heads`); every head and a leaderboard: `train_all`.
        out: the run directory to create.
        overwrite: replace a run already at `out`.
        progress: progress lines: True on stderr, False none, a function is handed each (`core.progress`).

    Returns:
        The `TrainResult`.

    Raises:
        UsageError: unknown head (or "all": use `train_all`), bad options, a bad --out, and the data
            problems `load_training_data` names.
        TEError: NaN/inf features (CacheError), training that diverged.
    """
    cfg = _config(cache, head, fields)
    if cfg.every_head:
        raise UsageError("train() fits one head; train_all() fits every head and returns their leaderboard")
    results, _ = _train_heads(cfg, [cfg.head], Path(out), many=False, overwrite=overwrite, progress=progress)
    return results[0]


def train_all(cache: "str | os.PathLike | TrainConfig", out: str | os.PathLike = "run", *, overwrite: bool = False,
              progress: Progress = True, **fields: Any) -> Leaderboard:
    """Fit every installed head (`te train --head all`): OUT/<head>/ per head, then OUT/leaderboard.json.

    Arguments as for `train` (no `head`, no head `options`). A head that fails is listed in the
    leaderboard's `failed` with its error, and the others go on.

    Returns:
        The `Leaderboard`: the `TrainResult`s, best first by k-fold accuracy (then k-fold loss) under
        k-fold selection, else by val accuracy (then val loss).
    """
    from transfer_engine.heads import list_heads

    cfg = _config(cache, ALL, fields)
    out_path = Path(out).expanduser().absolute()
    results, failed = _train_heads(cfg, list_heads(), out_path, many=True, overwrite=overwrite, progress=progress)
    board = Leaderboard(sorted(results, key=_rank_key), out_path, failed)
    # Last, and durably: its presence says every head was tried.
    write_text_durably(out_path / LEADERBOARD_JSON, json.dumps(board.to_dict(), indent=2) + "\n")
    return board


def _rank_key(result: TrainResult) -> tuple[float, float]:
    kfold = result.metrics.get("kfold")
    if kfold:
        return (-kfold["accuracy"], kfold["loss"])
    return (-result.metrics["val_accuracy"], result.metrics["val_loss"])


def _config(cache, head: str | None, fields: dict[str, Any]) -> TrainConfig:
    if isinstance(cache, TrainConfig):
        changes = {**fields, **({"head": head} if head is not None else {})}
        return replace(cache, **changes) if changes else cache
    return TrainConfig(cache=cache, **({"head": head} if head is not None else {}), **fields)


def _train_heads(cfg: TrainConfig, names: list[str], out_path: Path, *, many: bool, overwrite: bool,
                 progress: Progress) -> tuple[list[TrainResult], list[dict[str, str]]]:
    """Train each head of `names` into its run; returns (results, failures). With `many`, a head's failure
    is recorded and the next head goes on; otherwise it propagates."""
    from transfer_engine.heads import get_head_spec

    started = time.perf_counter()
    say = say_of(progress)
    specs = [get_head_spec(name) for name in names]
    for spec in specs:  # checked for every head before any work: a typo must not cost the heads before it
        default_hyperparameters(spec, lr=cfg.lr, epochs=cfg.epochs, weight_decay=cfg.weight_decay,
                                batch_size=cfg.batch_size, options=cfg.options)
    target = resolve_device(cfg.device)
    out_path = out_path.expanduser().absolute()
    results, failed = [], []
    with ExitStack() as staged:  # each head's block commits or aborts its writer; an error aborts the rest
        writers = _prepare_out(out_path, names, many, overwrite, staged)
        data = load_training_data(cfg.cache, dataset=cfg.dataset, backbone=cfg.backbone, space=cfg.space,
                                  memory_budget=cfg.memory_budget, progress=say)
        staged.callback(data.close)
        folds = _fold_plan(cfg, data, choosing=cfg.sweep or many, say=say)
        for spec in specs:
            writer = writers[spec.name]
            hp = default_hyperparameters(spec, lr=cfg.lr, epochs=cfg.epochs, weight_decay=cfg.weight_decay,
                                         batch_size=cfg.batch_size, options=cfg.options,
                                         train_rows=len(data.splits["train"]))
            try:
                with writer:
                    results.append(_train_one(spec, data, hp, writer, sweep=cfg.sweep, refit=cfg.refit,
                                              fixed_lr=cfg.lr is not None, seed=cfg.seed, device=target, say=say,
                                              started=started, folds=folds))
            except TEError as exc:
                if not many:
                    raise
                failed.append({"head": spec.name, "error": str(exc)})
                say(f"te: warning: head {spec.name} failed: {exc}")
            started = time.perf_counter()
    return results, failed


def _fold_plan(cfg: TrainConfig, data: TrainingData, *, choosing: bool, say: Say) -> FoldPlan | None:
    """The k-fold plan when something is chosen (a sweep, or the best of several heads) and `cfg.select`
    resolves to k-fold for this data's train+val (`core.selection`); None selects on val."""
    if not choosing:
        return None
    pool = sum(len(data.splits[name]) for name in POOLED)
    if resolve_selection(cfg.select, pool) != "kfold":
        say(f"selection on val ({len(data.splits['val'])} images; --select {cfg.select}, {pool} train+val records)")
        return None
    plan = FoldPlan.of(data, cfg.folds)
    say(f"selection by {cfg.folds}-fold cross-validation over {pool} train+val records (--select {cfg.select}); "
        "test is not used")
    return plan


def _prepare_out(out: Path, names: list[str], many: bool, overwrite: bool, staged: ExitStack) -> dict[str, RunWriter]:
    """Check --out before any work and open one staging writer per head, each entered into `staged`."""
    if not many:
        return {names[0]: staged.enter_context(RunWriter(out, overwrite=overwrite))}
    if out.exists():
        if not out.is_dir():
            raise UsageError(f"--out {out} is a file; expected a directory for one run per head")
        if (out / RUN_JSON).is_file():
            raise UsageError(f"--out {out} holds a single run; --head all needs a directory of its own")
        entries = {p.name for p in out.iterdir() if not p.name.startswith(".")}
        if (out / LEADERBOARD_JSON).is_file() and not overwrite:
            raise UsageError(f"--out {out} already holds a leaderboard; pass --overwrite to replace it, "
                             "or choose another --out")
        foreign = entries - set(names) - {LEADERBOARD_JSON}
        if foreign and not (out / LEADERBOARD_JSON).is_file():
            raise UsageError(f"--out {out} is a non-empty directory that is not a te leaderboard; choose a new or "
                             "empty directory")
    for name in names:
        check_out(out / name, overwrite)
    writers = {name: staged.enter_context(RunWriter(out / name, overwrite=overwrite)) for name in names}
    (out / LEADERBOARD_JSON).unlink(missing_ok=True)  # a re-run's board is written when it is complete
    return writers


def _train_one(spec, data: TrainingData, hp: HyperParameters, writer: RunWriter, *, sweep: bool, refit: bool,
               fixed_lr: bool, seed: int, device: torch.device, say: Say, started: float,
               folds: FoldPlan | None = None) -> TrainResult:
    train, val, test = data.splits["train"], data.splits["val"], data.splits.get("test")
    say(f"train {spec.name} on {data.dataset} ({len(train)} train, {len(val)} val"
        f"{f', {len(test)} test' if test else ''}; {data.space.config.backbone} features, {data.dim}-d, "
        f"{'in memory' if data.in_memory else 'streamed from the cache'})")
    sweep_result: SweepResult | None = None
    kfold: FoldScore | None = None
    if sweep:
        sweep_result = run_sweep(spec, data, hp, seed=seed, device=device, fixed_lr=fixed_lr, say=say, folds=folds)
        chosen, held_out, kfold = sweep_result.best.hp, sweep_result.best.val, sweep_result.best.kfold
        # The winner is refitted on train+val (unless --no-refit keeps its fit on train); the val numbers
        # reported stay those of the held-out fit.
        final = (fit_head(spec, data, data.combined(("train", "val")), chosen, seed=seed, device=device,
                          warm=sweep_result.best.fitted.warm, say=say) if refit else sweep_result.best.fitted)
        curve = sweep_result.best.fitted.curve
    else:
        chosen = hp
        final = fit_head(spec, data, train, hp, seed=seed, device=device, val=val, say=say)
        held_out = evaluate(final.module, data, val)
        curve = final.curve
        if folds is not None:  # one of several heads: ranked by the k-fold score of its setting
            kfold = cross_validate(spec, data, hp, folds, seed=seed, device=device)
    train_eval = evaluate(final.module, data, train)
    test_eval = evaluate(final.module, data, test) if test is not None else None
    shown = test_eval or held_out
    metrics = _metrics(spec, data, final, chosen, train_eval, held_out, test_eval, shown, sweep_result, kfold,
                       refit and sweep_result is not None, seed, time.perf_counter() - started)
    _write_run(spec, data, final, chosen, metrics, curve, shown, sweep_result, writer, seed)
    say(f"{spec.name}: train {percent(train_eval.accuracy)}, val {percent(held_out.accuracy)}"
        f"{f', test {percent(test_eval.accuracy)}' if test_eval else ''}"
        f"{f', {kfold.score.k}-fold {percent(kfold.score.accuracy)}' if kfold else ''} in {metrics['seconds']:.1f} s "
        f"-> {writer.out}")
    return TrainResult(spec.name, writer.out, metrics)


def _metrics(spec, data: TrainingData, final: Fitted, chosen: HyperParameters, train_eval: Evaluation,
             held_out: Evaluation, test_eval: Evaluation | None, shown: Evaluation, sweep: SweepResult | None,
             kfold: FoldScore | None, refitted: bool, seed: int, seconds: float) -> dict[str, Any]:
    hyper = {**chosen.to_dict(), "solver": final.solver, "selected_by": _selected_by(sweep),
             "fitted_on": FITTED_ON_TRAIN_VAL if refitted else "train"}
    if not spec.trainable:
        for unused in ("lr", "epochs", "batch_size", "weight_decay"):
            hyper.pop(unused)
    elif final.solver == "lbfgs":
        for unused in ("lr", "epochs", "batch_size"):
            hyper.pop(unused)
    return {
        "head": spec.name,
        "train_accuracy": train_eval.accuracy,
        "val_accuracy": held_out.accuracy,
        "test_accuracy": test_eval.accuracy if test_eval else None,
        "train_loss": train_eval.loss,
        "val_loss": held_out.loss,
        "test_loss": test_eval.loss if test_eval else None,
        "kfold": {**kfold.score.to_dict(), "loss": kfold.loss} if kfold else None,
        "per_class_recall": shown.per_class_recall(data.class_names),
        "macro_f1": shown.macro_f1(),
        "evaluated_on": shown.split,
        "hyperparameters": hyper,
        "solver": final.details,
        "sweep": sweep.to_list() if sweep else None,
        "samples": data.counts(),
        "dataset": data.dataset,
        "space": data.space.id,
        "backbone": data.space.config.backbone,
        "features": "in memory" if data.in_memory else "streamed from the cache",
        "feature_scale": data.scale,
        "exportable": data.provenance is not None,
        "seed": seed,
        "seconds": round(seconds, 3),
        "fit_seconds": round(final.seconds, 3),
    }


def _selected_by(sweep: SweepResult | None) -> str:
    if sweep is None:
        return "defaults"
    if sweep.selected_by == "kfold" and sweep.best.kfold is not None:
        return f"sweep, finalists by {sweep.best.kfold.score.k}-fold"
    return "sweep on val"


def _write_run(spec, data: TrainingData, final: Fitted, chosen: HyperParameters, metrics: dict[str, Any],
               curve: list[dict], shown: Evaluation, sweep: SweepResult | None, writer: RunWriter, seed: int) -> None:
    from transfer_engine.heads import registry

    config = data.space.config
    prov = data.provenance or {}
    ref = BackboneRef(name=prov.get("backbone", config.backbone), weights=prov.get("weights", UNRECORDED_WEIGHTS),
                      weights_digest=config.weights_digest, feature_dim=config.dim, seed=prov.get("seed"),
                      plugin=prov.get("plugin"))
    _, record = registry.lookup(spec.name)
    info = RunInfo(
        kind="train", backbone=ref, preprocess=dict(config.transform),
        head=HeadRef(spec.name, data.dim, data.num_classes, dict(chosen.options), plugin=record.distribution),
        class_names=list(data.class_names), weights_file=HEAD_WEIGHTS,
        dataset={"name": data.dataset, "cache": str(data.cache.root), "data": data.data_source,
                 "sha256": data.dataset_sha256, "splits": data.counts()},
        space={"id": data.space.id, "config": config.to_dict(), "provenance": data.provenance},
        seed=seed, hyperparameters=metrics["hyperparameters"])
    title = f"{spec.name} on {data.dataset} ({config.backbone})"
    # One metadata key: safetensors writes metadata from a hash map, so two keys can come out in either
    # order and the file would not repeat to the byte.
    writer.save_tensors(HEAD_WEIGHTS, final.module.state_dict(), {"te-head": spec.name})
    plots.learning_curve(curve, writer.file(plots.LEARNING_CURVE), title)
    plots.confusion_matrix(shown.confusion(), data.class_names, writer.file(plots.CONFUSION_MATRIX),
                           f"{title}, {shown.split} split: accuracy {100 * shown.accuracy:.1f}%")
    if sweep is not None:
        plots.sweep(sweep.to_list(), chosen.to_dict(), writer.file(plots.SWEEP), f"sweep of {title}")
    writer.write_json(METRICS_JSON, metrics)
    writer.write_json(RUN_JSON, info.to_dict())  # last: a run.json says the run is complete
