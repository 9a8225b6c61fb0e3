"""Which backbone layers train when, and at what learning rate.

The backbone is cut into *blocks* in forward order (the stem, each residual / inverted-residual block,
the final conv...), so any registered backbone works without a per-model table:

- pure containers (`nn.Sequential`, `nn.ModuleList`, `nn.ModuleDict`, exactly those types) and the root
  module are opened up; any other module with parameters is one block (a torchvision `BasicBlock`, an
  EfficientNet `MBConvBlock`, a `Conv2dNormActivation`...);
- when that gives fewer than `MIN_BLOCKS` blocks (a ViT's `Encoder` is one module), the largest block is
  opened up too, until there are enough or nothing can be opened.

Parameters a module holds directly (a ViT's class token) form a block of their own, placed before the
module's children. Registration order is forward order for every torchvision and timm model, which is
what layer-wise decay and "unfreeze from the top" rely on.

Strategies (`STRATEGIES`) say from which epoch each block trains; "lora" trains only the low-rank adapters
that finetune/lora.py puts into the blocks (their own weights stay frozen). A block that does not train is put in
eval mode as a whole, every epoch, after `model.train()`: its BatchNorm statistics cannot drift and its
dropout / stochastic depth is off, so a frozen block computes exactly what `te extract` computed (the
peers' classic bug is `requires_grad=False` alone, which leaves BatchNorm updating its running stats).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import nn

from transfer_engine.core.choices import STRATEGIES
from transfer_engine.errors import UsageError

MIN_BLOCKS = 4
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
NORM_STATS = nn.modules.batchnorm._NormBase  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm with stats
ADAPTER_MARK = "lora_"  # peft's adapter parameters: "<layer>.lora_A.<adapter>.weight", "<layer>.lora_B...."


def is_adapter(name: str) -> bool:
    """Whether the parameter called `name` (dotted) belongs to a LoRA adapter rather than the backbone."""
    return any(part.startswith(ADAPTER_MARK) for part in name.split("."))


@dataclass
class Block:
    """A run of backbone parameters that trains or stays frozen together.

    Attributes:
        name: dotted module name ("layer3.1"), or "<name>.<own>" for parameters held directly.
        modules: the modules whose mode (train/eval) follows the block's state.
        params: (dotted name, parameter) pairs, in registration order.
    """

    name: str
    modules: list[nn.Module]
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)

    @property
    def has_adapters(self) -> bool:
        return any(is_adapter(n) for n, _ in self.params)


def _own_params(prefix: str, module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(f"{prefix}{n}", p) for n, p in module.named_parameters(recurse=False)]


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _open(name: str, module: nn.Module) -> list[Block]:
    """The blocks of `module`'s children (and its own parameters first)."""
    prefix = f"{name}." if name else ""
    out: list[Block] = []
    own = _own_params(prefix, module)
    if own:
        # Only the parameters: the module's mode also drives its children, which are blocks of their own.
        out.append(Block(f"{prefix}<own>", [], own))
    for child_name, child in module.named_children():
        if _has_params(child):
            out.extend(_structural(prefix + child_name, child))
    return out


def _structural(name: str, module: nn.Module) -> list[Block]:
    if type(module) in _CONTAINERS:
        return _open(name, module)
    prefix = f"{name}." if name else ""
    return [Block(name, [module], [(prefix + n, p) for n, p in module.named_parameters()])]


def backbone_blocks(model: nn.Module) -> list[Block]:
    """Cut a backbone into blocks in forward order (see the module docstring).

    Args:
        model: the backbone (images -> pooled features).

    Returns:
        The blocks; every parameter of `model` is in exactly one.
    """
    blocks = _open("", model)
    while len(blocks) < MIN_BLOCKS:
        openable = [i for i, b in enumerate(blocks)
                    if len(b.modules) == 1 and sum(_has_params(c) for c in b.modules[0].children()) >= 2]
        if not openable:
            break
        i = max(openable, key=lambda j: blocks[j].numel)
        blocks[i:i + 1] = _open(blocks[i].name, blocks[i].modules[0])
    seen = {id(p) for b in blocks for _, p in b.params}
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:  # shared or oddly registered parameters: keep them trainable with the last block
        blocks.append(Block("<other>", [], [(n, p) for n, p in model.named_parameters() if n in missing]))
    return blocks


@dataclass
class Strategy:
    """From which epoch each backbone block trains (the head always trains).

    Attributes:
        name: one of STRATEGIES.
        start_epochs: per block, the first epoch (0-based) in which it trains; None: never.
        freeze_bn: keep BatchNorm running statistics frozen in trainable blocks too (their affine
            parameters still train).
        adapters_only: in a trainable block only the adapter parameters (`is_adapter`) train ("lora").
    """

    name: str
    start_epochs: list[int | None]
    freeze_bn: bool = False
    adapters_only: bool = False

    def trainable(self, epoch: int) -> list[bool]:
        """Per block, whether it trains in `epoch`."""
        return [s is not None and epoch >= s for s in self.start_epochs]

    def phase(self, epoch: int) -> tuple[bool, ...]:
        """A value that changes exactly when the set of trainable blocks changes."""
        return tuple(self.trainable(epoch))

    def describe(self, blocks: list[Block]) -> str:
        """One line: what trains when."""
        starts = sorted({s for s in self.start_epochs if s is not None})
        if self.adapters_only:
            params = [(n, p) for b in blocks for n, p in b.params]
            adapter = sum(p.numel() for n, p in params if is_adapter(n))
            base = sum(p.numel() for n, p in params if not is_adapter(n))
            adapted = sum(1 for b in blocks if b.has_adapters)
            return (f"{self.name}: adapters in {adapted}/{len(blocks)} backbone blocks train ({adapter:,} parameters, "
                    f"{100 * adapter / max(base, 1):.2f}% of the backbone's {base:,}); the backbone's own weights "
                    "stay frozen")
        if not starts:
            return f"{self.name}: head only, backbone frozen"
        parts = []
        for s in starts:
            n = sum(1 for x in self.start_epochs if x is not None and x <= s)
            parts.append(f"from epoch {s + 1}: top {n}/{len(blocks)} backbone blocks")
        return f"{self.name}: " + ", ".join(parts) + (" (BatchNorm statistics frozen)" if self.freeze_bn else "")


def make_strategy(name: str, num_blocks: int, *, unfreeze_epoch: int = 1, milestones: tuple[int, ...] = (),
                  freeze_bn: bool = False, adapters: Sequence[bool] | None = None) -> Strategy:
    """Build a strategy for a backbone of `num_blocks` blocks.

    Args:
        name: "freeze" (head only), "no_freeze" (everything from the start), "freeze_unfreeze" (head only
            for `unfreeze_epoch` epochs, then everything), "unfreeze_milestones" (the backbone is split
            into len(milestones) groups of consecutive blocks; at epoch milestones[i] the i-th group from
            the top starts training), "lora" (from the start, only the adapters finetune/lora.py attached).
        num_blocks: number of backbone blocks (`backbone_blocks`).
        unfreeze_epoch: epochs of head-only training before freeze_unfreeze unfreezes.
        milestones: increasing epochs (1-based count of epochs trained before each unfreeze).
        freeze_bn: keep BatchNorm running statistics frozen everywhere.
        adapters: per block, whether it holds adapters (`Block.has_adapters`); "lora" trains those blocks'
            adapters (None: whatever adapters any block holds).

    Returns:
        The `Strategy`.

    Raises:
        UsageError: an unknown name or milestones that do not fit.
    """
    if name not in STRATEGIES:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if name == "freeze":
        return Strategy(name, [None] * num_blocks, freeze_bn)
    if name == "no_freeze":
        return Strategy(name, [0] * num_blocks, freeze_bn)
    if name == "lora":
        starts = [0 if a else None for a in adapters] if adapters is not None else [0] * num_blocks
        return Strategy(name, starts, freeze_bn, adapters_only=True)
    if name == "freeze_unfreeze":
        if unfreeze_epoch < 0:
            raise UsageError(f"--unfreeze-epoch must be >= 0, got {unfreeze_epoch}")
        return Strategy(name, [unfreeze_epoch] * num_blocks, freeze_bn)
    milestones = tuple(int(m) for m in milestones)
    if not milestones:
        raise UsageError("--strategy unfreeze_milestones needs --milestones, e.g. --milestones 1,2 "
                         "(top half of the backbone after 1 epoch, all of it after 2)")
    if any(m < 0 for m in milestones) or list(milestones) != sorted(milestones):
        raise UsageError(f"--milestones must be increasing epochs >= 0, got {','.join(map(str, milestones))}")
    if len(milestones) > num_blocks:
        raise UsageError(f"--milestones has {len(milestones)} entries but the backbone has only {num_blocks} "
                         "blocks; give fewer milestones")
    groups = len(milestones)
    starts: list[int | None] = []
    for i in range(num_blocks):
        # Block i belongs to group g counted from the bottom; the top group (g = groups-1) unfreezes first.
        g = i * groups // num_blocks
        starts.append(milestones[groups - 1 - g])
    return Strategy(name, starts, freeze_bn)


def apply_phase(backbone: nn.Module, blocks: list[Block], strategy: Strategy, epoch: int) -> int:
    """Set requires_grad and train/eval modes for `epoch`; call right after `model.train()`.

    Args:
        backbone: the backbone module (already in train mode).
        blocks: its blocks.
        strategy: the strategy.
        epoch: the epoch about to be trained (0-based).

    Returns:
        The number of backbone parameters (elements) that train in this epoch.
    """
    count = 0
    for block, on in zip(blocks, strategy.trainable(epoch)):
        for name, p in block.params:
            trains = on and (not strategy.adapters_only or is_adapter(name))
            p.requires_grad_(trains)
            count += p.numel() if trains else 0
        if not on:
            for m in block.modules:
                m.eval()
    if strategy.freeze_bn:
        for m in backbone.modules():
            if isinstance(m, NORM_STATS):
                m.eval()
    return count


def param_groups(blocks: list[Block], head: nn.Module, lr: float, layer_decay: float,
                 weight_decay: float) -> list[dict]:
    """Optimizer parameter groups with layer-wise decayed learning rates.

    The head trains at `lr`; backbone block i of B at lr * layer_decay ** (B - i), so the last block gets
    lr * layer_decay and the stem the smallest rate (timm's layer_decay; fastai's discriminative rates).
    Biases and normalization weights (1-d tensors) get no weight decay, as in timm and the BiT/ViT recipes.

    Args:
        blocks: the backbone's blocks.
        head: the head module.
        lr: the head's (peak) learning rate.
        layer_decay: factor per block, in (0, 1]; 1 trains every layer at `lr`.
        weight_decay: weight decay of the matrices and convolutions.

    Returns:
        Groups for a torch optimizer; each carries "lr_scale" and "name" (the scheduler multiplies the
        schedule by lr_scale) and holds every parameter, frozen or not, so the optimizer state has the same
        layout in every phase (what checkpoints and --resume need).
    """
    if not 0 < layer_decay <= 1:
        raise UsageError(f"--layer-decay must be in (0, 1], got {layer_decay}")
    units = [(b.name, b.params, layer_decay ** (len(blocks) - i)) for i, b in enumerate(blocks)]
    units.append(("head", list(head.named_parameters()), 1.0))
    groups = []
    for name, params, scale in units:
        decay = [p for _, p in params if p.ndim > 1]
        plain = [p for _, p in params if p.ndim <= 1]
        for suffix, members, wd in (("", decay, weight_decay), (".no_decay", plain, 0.0)):
            if members:
                groups.append({"params": members, "lr": lr * scale, "lr_scale": scale,
                               "weight_decay": wd, "name": name + suffix})
    return groups


def norm_buffers(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The running statistics of every BatchNorm-like layer (what `freeze_bn` keeps constant)."""
    for name, m in module.named_modules():
        if isinstance(m, NORM_STATS):
            for bname, buf in m.named_buffers(recurse=False):
                yield f"{name}.{bname}", buf
