"""Fit one head on one split with given hyper-parameters: the solver each head needs.

- non-gradient heads (`HeadSpec.fit`, e.g. knn): one call on the split's features;
- `solver="lbfgs"` heads that are one `nn.Linear`, features in memory: preconditioned full-batch L-BFGS
  (`transfer_engine.train.lbfgs`); other lbfgs heads in memory: torch's L-BFGS on the full batch;
- everything else, and any head whose features are streamed from the cache: minibatches with AdamW
  (decoupled weight decay) and a cosine learning-rate schedule; lbfgs heads keep their objective there
  (Adam on loss + weight_decay / 2 * ||W||^2), so a streamed linear head solves the same problem.

Heads are trained on features divided by one global scale (`TrainingData.scale`) when their
`HeadSpec.input_scale` lets te undo it ("fold": the first `nn.Linear`'s weight is divided by the scale
afterwards; "invariant": nothing to undo); the saved head always takes raw features.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from transfer_engine.core.progress import Say
from transfer_engine.core.runtime import cpu_has_native_bf16
from transfer_engine.errors import TEError, UsageError
from transfer_engine.heads.spec import first_linear, input_scale_of
from transfer_engine.train import lbfgs
from transfer_engine.train.metrics import evaluate

if TYPE_CHECKING:
    from transfer_engine.heads import HeadSpec
    from transfer_engine.train.data import Split, TrainingData

DEFAULTS = {"lr": 1e-3, "epochs": 30, "weight_decay": 1e-4, "batch_size": 256}
# A default batch is shrunk until an epoch has this many steps: on a few hundred rows, 256-row batches
# leave Adam too few updates (the run behind this: docs/train.md, "Measurements").
MIN_STEPS_PER_EPOCH = 16
# Largest number of L-BFGS iterations of the full-batch solvers.
MAX_LBFGS_ITERATIONS = 500
# Record held-out accuracy on the learning curve every this many L-BFGS iterations (it costs a product).
CURVE_EVERY = 5


class TrainingDiverged(TEError):
    """The loss became NaN or inf: the learning rate is too high for this head and data."""


@dataclass
class HyperParameters:
    """How a head is fitted.

    Attributes:
        weight_decay: L2 penalty (lbfgs heads: of the objective; others: AdamW's decoupled decay).
        lr: AdamW's peak learning rate (unused by L-BFGS and non-gradient heads).
        epochs: passes over the data of minibatch training.
        batch_size: rows per minibatch.
        options: the head's build options (e.g. {"k": 20} for knn).
    """

    weight_decay: float
    lr: float
    epochs: int
    batch_size: int
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def replace(self, **changes: Any) -> "HyperParameters":
        values = {**self.to_dict(), **changes}
        values["options"] = dict(values["options"])
        return HyperParameters(**values)


def default_hyperparameters(spec: "HeadSpec", *, lr: float | None = None, epochs: int | None = None,
                            weight_decay: float | None = None, batch_size: int | None = None,
                            options: dict[str, Any] | None = None, train_rows: int | None = None) -> HyperParameters:
    """te's defaults, overridden by the head's `train_defaults`, overridden by what the user gave.

    A default batch size (not one the user or the head chose) shrinks to give an epoch of `train_rows`
    rows at least MIN_STEPS_PER_EPOCH steps.

    Raises:
        UsageError: a value out of range, or an option the head does not declare.
    """
    from transfer_engine.heads import check_options

    checked = check_options(spec, options or {})
    merged = {**DEFAULTS, **spec.train_defaults}
    given = {"lr": lr, "epochs": epochs, "weight_decay": weight_decay, "batch_size": batch_size}
    merged.update({k: v for k, v in given.items() if v is not None})
    if batch_size is None and "batch_size" not in spec.train_defaults and train_rows:
        merged["batch_size"] = min(merged["batch_size"], max(1, math.ceil(train_rows / MIN_STEPS_PER_EPOCH)))
    if merged["lr"] <= 0 or merged["epochs"] < 1 or merged["batch_size"] < 1 or merged["weight_decay"] < 0:
        raise UsageError(f"need lr > 0, epochs >= 1, batch size >= 1 and weight decay >= 0; got lr {merged['lr']}, "
                         f"epochs {merged['epochs']}, batch size {merged['batch_size']}, "
                         f"weight decay {merged['weight_decay']}")
    return HyperParameters(float(merged["weight_decay"]), float(merged["lr"]), int(merged["epochs"]),
                           int(merged["batch_size"]), {**spec.options, **checked})


@dataclass
class Fitted:
    """A fitted head and how it got there.

    Attributes:
        module: the head in eval mode, on the CPU, taking raw (unscaled) features.
        solver: "lbfgs", "adamw", "adam+l2" (a streamed lbfgs head) or "fit" (no gradient steps).
        curve: the learning curve: {"step", "unit", "train_loss", "val_loss", "val_accuracy"} entries.
        seconds: wall time of the fit.
        details: solver facts worth reporting (iterations, evaluations, converged).
        warm: what a following fit of the same head may start from (L-BFGS: scaled W and b).
    """

    module: nn.Module
    solver: str
    curve: list[dict]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    warm: Any = None


def fit_head(spec: "HeadSpec", data: "TrainingData", split: "Split", hp: HyperParameters, *, seed: int = 0,
             device: torch.device | None = None, val: "Split | None" = None, warm: Any = None,
             say: Say | None = None) -> Fitted:
    """Fit head `spec` on `split`.

    Args:
        spec: the head.
        data: where the features come from.
        split: the rows to fit on.
        hp: the hyper-parameters.
        seed: seeds the head's initialization, dropout and the minibatch order.
        device: where to compute (None: CPU).
        val: rows for the learning curve's held-out points (None: train loss only).
        warm: `Fitted.warm` of an earlier fit of the same head (sweeps go faster from it).
        say: a function taking a progress line, or None.

    Returns:
        The `Fitted` head.

    Raises:
        UsageError: a non-trainable head without a fit hook, a head option it does not accept.
        TrainingDiverged: the loss became NaN or inf.
    """
    from transfer_engine.heads import create_head, registry
    from transfer_engine.registry import call_hook

    device = device or torch.device("cpu")
    start = time.perf_counter()
    torch.manual_seed(seed)
    module = create_head(spec.name, data.dim, data.num_classes, **hp.options)
    if not spec.trainable:
        if spec.fit is None:
            raise UsageError(f"head {spec.name!r} is not trainable and declares no fit hook; te cannot fit it")
        features = split.features if split.features is not None else data.space.gather(split.keys)
        _, record = registry.lookup(spec.name)
        call_hook("head", spec.name, record, lambda: spec.fit(module, features, split.labels), "fit")
        return Fitted(module.eval(), "fit", [], time.perf_counter() - start, {"rows": len(split)})
    how = input_scale_of(spec, module)
    scaled = how in ("fold", "invariant")
    if spec.solver == "lbfgs" and data.in_memory and type(module) is nn.Linear:
        fitted = _fit_linear_lbfgs(module, data, split, hp, device, val, warm, seed)
    elif spec.solver == "lbfgs" and data.in_memory:
        fitted = _fit_full_batch(module, data, split, hp, device, val, scaled)
    else:
        fitted = _fit_minibatch(module, spec.solver, data, split, hp, seed, device, val, scaled, say)
    if how == "fold" and fitted.solver != "lbfgs":
        _fold_scale(fitted.module, data.scale)
    fitted.module = fitted.module.to("cpu").eval()
    fitted.seconds = time.perf_counter() - start
    return fitted


# -- the scale ------------------------------------------------------------------------------------------------
@torch.no_grad()
def _fold_scale(module: nn.Module, scale: float) -> None:
    """Turn a head trained on features / scale into one taking raw features (W x / s = (W / s) x)."""
    first = first_linear(module)
    if first is None:
        raise TEError("the head declares input_scale='fold' but its first layer is not an nn.Linear; declare "
                      "'raw' (or 'invariant') in its HeadSpec")
    first.weight.div_(scale)


# -- solvers ---------------------------------------------------------------------------------------------------
def _fit_linear_lbfgs(module: nn.Linear, data: "TrainingData", split: "Split", hp: HyperParameters,
                      device: torch.device, val: "Split | None", warm: Any, seed: int) -> Fitted:
    if hp.weight_decay <= 0:
        raise UsageError("the linear head's L-BFGS solver needs --weight-decay > 0 (an unpenalized problem has "
                         "no finite optimum on separable data)")
    x = split.features.to(device)
    y = split.labels.to(device)
    low = device.type == "cpu" and cpu_has_native_bf16()
    problem = lbfgs.LinearProblem(x, y, data.num_classes, hp.weight_decay, scale=data.scale, low_precision=low,
                                  seed=seed)
    val_x = val.features.to(device) if val is not None else None
    val_y = val.labels.to(device) if val is not None else None
    curve: list[dict] = []

    def on_iteration(iteration: int, objective: float, w: torch.Tensor, b: torch.Tensor) -> None:
        point = {"step": iteration, "unit": "L-BFGS iteration", "train_loss": objective}
        if val_x is not None and iteration % CURVE_EVERY == 1:
            with torch.no_grad():
                logits = (val_x @ (w / data.scale).t()) + b
                point["val_loss"] = float(F.cross_entropy(logits, val_y))
                point["val_accuracy"] = float((logits.argmax(1) == val_y).double().mean())
        curve.append(point)

    start = problem.pack(*warm) if warm is not None else None
    result = lbfgs.solve(problem, start=start, max_iterations=MAX_LBFGS_ITERATIONS, on_iteration=on_iteration)
    if not math.isfinite(result.objective):
        raise TrainingDiverged("L-BFGS diverged (the objective is not finite); check the features")
    with torch.no_grad():
        module.weight.copy_(result.weight / data.scale)
        module.bias.copy_(result.bias)
    details = {"iterations": result.iterations, "evaluations": result.evaluations, "converged": result.converged,
               "objective": result.objective, "precision": "bf16, then fp32" if low else "fp32"}
    return Fitted(module, "lbfgs", curve, 0.0, details, warm=(result.weight, result.bias))


def _fit_full_batch(module: nn.Module, data: "TrainingData", split: "Split", hp: HyperParameters,
                    device: torch.device, val: "Split | None", scaled: bool) -> Fitted:
    """torch's L-BFGS on the whole split, for lbfgs heads other than a single nn.Linear."""
    module = module.to(device).train()
    x = split.features.to(device)
    x = x / data.scale if scaled else x
    y = split.labels.to(device)
    decay = [p for p in module.parameters() if p.dim() >= 2]
    optimizer = torch.optim.LBFGS(module.parameters(), lr=1, max_iter=MAX_LBFGS_ITERATIONS, history_size=10,
                                  line_search_fn="strong_wolfe", tolerance_grad=lbfgs.GTOL, tolerance_change=1e-9)
    curve: list[dict] = []

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(module(x), y) + 0.5 * hp.weight_decay * sum(p.pow(2).sum() for p in decay)
        loss.backward()
        curve.append({"step": len(curve) + 1, "unit": "L-BFGS evaluation", "train_loss": float(loss)})
        return loss

    optimizer.step(closure)
    if not all(math.isfinite(c["train_loss"]) for c in curve[-1:]):
        raise TrainingDiverged("L-BFGS diverged (the loss is not finite)")
    if val is not None:
        held = evaluate(module, data, val, scaled=scaled, device=device)
        curve[-1].update(val_loss=held.loss, val_accuracy=held.accuracy)
    return Fitted(module, "lbfgs", curve, 0.0, {"evaluations": len(curve)})


def _fit_minibatch(module: nn.Module, solver: str, data: "TrainingData", split: "Split", hp: HyperParameters,
                   seed: int, device: torch.device, val: "Split | None", scaled: bool,
                   say: Say | None) -> Fitted:
    module = module.to(device).train()
    decay = [p for p in module.parameters() if p.dim() >= 2]
    other = [p for p in module.parameters() if p.dim() < 2]
    penalized = solver == "lbfgs"  # keep the lbfgs objective: the penalty in the loss, not decoupled
    # One fused kernel per step instead of ~10 elementwise passes over each weight: a head's batches are small
    # (16 steps an epoch), so the optimizer, not the head, took most of the time (docs/train.md, "Measurements").
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    if penalized:
        optimizer: torch.optim.Optimizer = torch.optim.Adam(module.parameters(), lr=hp.lr, **fused)
    else:
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                       {"params": other, "weight_decay": 0.0}], lr=hp.lr, **fused)
    steps = hp.epochs * math.ceil(len(split) / hp.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    curve: list[dict] = []
    for epoch in range(hp.epochs):
        total, rows = 0.0, 0
        for x, y in data.batches(split, hp.batch_size, shuffle=True, seed=seed, epoch=epoch, device=device,
                                 scaled=scaled):
            loss = F.cross_entropy(module(x), y)
            if penalized:
                loss = loss + 0.5 * hp.weight_decay * sum(p.pow(2).sum() for p in decay)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * y.shape[0]
            rows += y.shape[0]
        train_loss = total / max(rows, 1)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training diverged in epoch {epoch + 1} (loss {train_loss}); lower --lr "
                                   f"(it was {hp.lr:g})")
        point = {"step": epoch + 1, "unit": "epoch", "train_loss": train_loss}
        if val is not None:
            held = evaluate(module, data, val, scaled=scaled, device=device)
            point.update(val_loss=held.loss, val_accuracy=held.accuracy)
        curve.append(point)
        if say is not None and (epoch + 1) % max(1, hp.epochs // 5) == 0:
            extra = f", val accuracy {100 * point['val_accuracy']:.1f}%" if "val_accuracy" in point else ""
            say(f"  epoch {epoch + 1}/{hp.epochs}: train loss {train_loss:.4f}{extra}")
    return Fitted(module, "adam+l2" if penalized else "adamw", curve, 0.0, {"steps": steps})

