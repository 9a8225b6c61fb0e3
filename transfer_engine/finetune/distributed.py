"""Fine-tuning under torchrun: DDP wrapping that follows the strategy, the gradient-side sums the loop needs,
and the check that the ranks ended in step.

The trap this module exists for: DistributedDataParallel decides at construction which parameters it
synchronizes (those with requires_grad=True then). Unfreeze a layer after wrapping and its gradients are
never all-reduced: every rank silently trains its own copy. So the wrapper is rebuilt whenever the set of
trainable parameters changes (`Replica.wrap`), and at the end the ranks compare a digest of their
weights (`check_in_sync`), so divergence can never go unnoticed.

The object collectives (rank and world, barrier, all-gather, rank 0's value) are te's watched ones, taken
from `transfer_engine.core.distributed` as te extract takes them: a rank that dies or freezes ends the run
with one line naming it. Without torchrun (WORLD_SIZE unset or 1) everything here
is a no-op on a single process.
"""

from __future__ import annotations

import torch
import torch.distributed as torch_dist
from torch import nn

from transfer_engine.core.digest import weights_digest
from transfer_engine.core.distributed import all_gathered
from transfer_engine.errors import TEError

__all__ = ["Replica", "check_in_sync", "sum_tensor"]


class Replica:
    """The model as the training step sees it: plain, or DDP-wrapped for the current trainable set.

    Args:
        model: the module to train (on its device already).
        device: its device (DDP needs the device id on CUDA).
    """

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.model = model
        self.device = device
        self.distributed = torch_dist.is_initialized() and torch_dist.get_world_size() > 1
        self._wrapped: nn.Module = model
        self._trainable: tuple[int, ...] | None = None

    def wrap(self) -> nn.Module:
        """The module to call for training; a new DDP wrapper when the trainable set has changed."""
        if not self.distributed:
            return self.model
        trainable = tuple(i for i, p in enumerate(self.model.parameters()) if p.requires_grad)
        if trainable != self._trainable:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # broadcast_buffers: BatchNorm statistics follow rank 0, as in one process.
            self._wrapped = DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=True)
            self._trainable = trainable
        return self._wrapped

    def sync_buffers(self) -> None:
        """Copy rank 0's buffers (BatchNorm statistics) to every rank.

        DDP broadcasts buffers at the start of each forward, so after the last step of an epoch each rank
        still holds the statistics of its own last batch; evaluation and checkpoints need one model.
        """
        if self.distributed:
            for buf in self.model.buffers():
                torch_dist.broadcast(buf, src=0)


def sum_tensor(t: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (in place; returns `t`). CPU tensors travel through the GPU under NCCL,
    which reduces CUDA tensors only."""
    if not torch_dist.is_initialized():
        return t
    if torch_dist.get_backend() == "nccl" and not t.is_cuda:
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        torch_dist.all_reduce(on_gpu, op=torch_dist.ReduceOp.SUM)
        t.copy_(on_gpu.cpu())
        return t
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.SUM)
    return t


def check_in_sync(model: nn.Module) -> None:
    """Raise TEError when the ranks' weights differ (a no-op on one process)."""
    digests = all_gathered(weights_digest(model), "comparing the ranks' weights")
    if len(set(digests)) > 1:
        raise TEError(f"the {len(digests)} ranks ended with different weights (DDP lost synchronization); "
                      "this is a bug in te, please report it with the command line")
