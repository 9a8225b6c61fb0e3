"""The training step and evaluation: AdamW/SGD over layer-wise parameter groups, warmup + cosine,
autocast, channels_last, gradient clipping, DDP through `Replica`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from transfer_engine.core.choices import OPTIMIZERS
from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.progress import ProgressLine, Say
from transfer_engine.core.runtime import autocast_context
from transfer_engine.errors import TEError, UsageError
from transfer_engine.finetune import data as fdata
from transfer_engine.finetune.distributed import Replica, sum_tensor
from transfer_engine.finetune.strategies import Block, Strategy, apply_phase, param_groups



class WarmupCosine:
    """Learning-rate factor per optimizer step: linear warmup to 1, then cosine to 0 at `total` steps.

    A class (not a lambda) so `LambdaLR.state_dict()` saves it and a resumed run continues the schedule.
    """

    def __init__(self, total: int, warmup: int) -> None:
        self.total = max(1, total)
        self.warmup = max(0, min(warmup, self.total - 1))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(1, self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(groups: list[dict], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")


@dataclass
class EpochSums:
    """Running totals of the training batches of one epoch (kept in checkpoints)."""

    loss: float = 0.0
    correct: int = 0
    count: int = 0

    def as_dict(self) -> dict:
        return {"loss": self.loss, "correct": self.correct, "count": self.count}


@dataclass
class Evaluation:
    """Loss, accuracy and confusion matrix (rows: true class, columns: predicted) of one split."""

    loss: float
    accuracy: float
    confusion: list[list[int]] = field(default_factory=list)
    count: int = 0


class Trainer:
    """One model, its optimizer and schedule, on one device (one rank of a DDP run).

    Args:
        model: the Classifier (backbone + head).
        blocks: the backbone's blocks (`backbone_blocks(model.backbone)`).
        strategy: when which block trains.
        cfg: the run's config, with every setting resolved (`FinetuneConfig.fixed()`): its optimizer,
            lr, layer_decay, weight_decay, warmup, clip_grad, label_smoothing, channels_last (convolutions
            in NHWC memory layout) and backbone_dropout (dropout and stochastic depth inside the backbone
            while training; False, with frozen BatchNorm statistics, trains the backbone in eval mode, so it
            computes what te extract computed and the warm-started head fits it from the first step).
        num_classes: outputs of the head.
        total_steps: optimizer steps of the whole run (for the schedule).
        device: where to train.
        precision: "fp32", "bf16" or "fp16" autocast of the training steps. Evaluation always runs in
            fp32, the precision te export writes: a sharp warm-start head turns bf16's feature error into
            changed answers (docs/finetune.md, "Precision and speed"), so selecting on a bf16 evaluation
            would select on what is not shipped and would not reproduce the start.
    """

    def __init__(self, model: nn.Module, blocks: list[Block], strategy: Strategy, cfg: FinetuneConfig,
                 num_classes: int, total_steps: int, device: torch.device, precision: str) -> None:
        channels_last, backbone_dropout = cfg.channels_last, cfg.backbone_dropout
        self.model = model.to(device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.blocks, self.strategy, self.cfg, self.num_classes = blocks, strategy, cfg, num_classes
        self.device, self.precision, self.channels_last = device, precision, channels_last
        self.backbone_dropout = backbone_dropout
        self.replica = Replica(self.model, device)
        groups = param_groups(blocks, model.head, cfg.lr, cfg.layer_decay, cfg.weight_decay)
        self.optimizer = make_optimizer(groups, cfg)
        warmup = int(round(cfg.warmup * total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupCosine(total_steps, warmup))
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def set_phase(self, epoch: int) -> int:
        """Train mode with the strategy's frozen blocks in eval mode (the whole backbone without
        `backbone_dropout` under frozen BatchNorm statistics); returns the trainable backbone size."""
        self.model.train()
        count = apply_phase(self.model.backbone, self.blocks, self.strategy, epoch)
        if self.strategy.freeze_bn and not self.backbone_dropout:
            self.model.backbone.eval()  # gradients flow in eval mode; only dropout / drop-path are off
        return count

    def trainable_params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train_steps(self, batches: torch.utils.data.DataLoader, sums: EpochSums,
                    after_step: Callable[[int], None] | None = None) -> EpochSums:
        """Run the optimizer steps of `batches` (the caller has called `set_phase`).

        Args:
            batches: a loader of (images, labels), this rank's share of each global batch.
            sums: running totals to add to (over all ranks).
            after_step: called with the number of images of each step (progress, checkpoints).

        Returns:
            `sums`, updated.
        """
        net = self.replica.wrap()
        params = self.trainable_params()
        for images, labels in batches:
            x, y = self._input(images), labels.to(self.device)
            with autocast_context(self.device, self.precision):
                logits = net(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=self.cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise TEError(f"the training loss became {loss.item()} at step {self.scheduler.last_epoch}; "
                              "lower --lr (or use --precision fp32)")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.cfg.clip_grad > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            totals = torch.tensor([loss.detach().float().item() * y.numel(),
                                   float((logits.argmax(1) == y).sum()), float(y.numel())], dtype=torch.float64)
            sum_tensor(totals)
            sums.loss += float(totals[0])
            sums.correct += int(totals[1])
            sums.count += int(totals[2])
            if after_step is not None:
                after_step(int(totals[2]))
        return sums

    @torch.inference_mode()
    def evaluate(self, dataset: fdata.ImageSet, batch_size: int, workers: int, rank: int = 0,
                 world: int = 1) -> Evaluation:
        """Loss and accuracy of the model (eval mode, fp32, no augmentation) on `dataset`, over all ranks."""
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64)
        confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        batches = fdata.loader(dataset, fdata.EvalBatches(len(dataset), batch_size, rank, world), workers)
        for images, labels in batches:
            logits = self.model(self._input(images)).float()  # fp32 whatever trains (see the class docstring)
            y = labels.to(self.device)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").double().cpu()
            pred = logits.argmax(1).cpu()
            confusion.index_put_((labels, pred), torch.ones_like(pred), accumulate=True)
        sum_tensor(confusion)
        sum_tensor(loss_sum)
        count = int(confusion.sum())
        if count == 0:
            return Evaluation(float("nan"), float("nan"), confusion.tolist(), 0)
        return Evaluation(float(loss_sum) / count, float(confusion.trace()) / count, confusion.tolist(), count)

    def lrs(self) -> dict[str, float]:
        """The current learning rate of the head and of the last and first backbone block."""
        groups = [g for g in self.optimizer.param_groups if not g["name"].endswith(".no_decay")]
        return {g["name"]: g["lr"] for g in (groups[-1], groups[-2] if len(groups) > 1 else groups[-1], groups[0])}


class StepProgress:
    """te finetune's progress line (drawn by `core.progress.ProgressLine`: on stderr, or handed to a function):
    epoch, step, images/s, loss; `line()` prints an epoch's summary on a line of its own."""

    def __init__(self, enabled: bool | Say, epochs: int, steps: int, every: float = 5.0) -> None:
        self.epochs, self.steps = epochs, steps
        self.out = ProgressLine(enabled=enabled, every=every)

    def update(self, epoch: int, step: int, images_per_second: float, loss: float) -> None:
        if not self.out.due():
            return
        left = self.steps - step
        self.out.draw(f"finetune: epoch {epoch + 1}/{self.epochs} step {step}/{self.steps} "
                      f"{images_per_second:.1f} img/s loss {loss:.4f}",
                      plain_suffix=f" ({left} steps left in the epoch)" if left else "")

    def line(self, text: str) -> None:
        self.out.message(text)
