"""te's content hashes: an image's key (its bytes) and a model's weights, one rule each wherever te uses it.

An image is known by `content_key`, the SHA-256 of its file's bytes: the data sources compute it, the
feature cache is addressed by it (the same image under two names is one row).

The feature cache's identity rests on it (a feature space holds its backbone's digest, a run records it and
a rebuild must give it again), so the rule is fixed: changing it would give every existing cache new space
ids. Fine-tuning under torchrun compares the ranks' digests with the same rule. torch is imported inside
the function: `core` imports without it.
"""

from __future__ import annotations

import hashlib
from typing import Any


def content_key(data: bytes) -> str:
    """The key of an image: SHA-256 hex digest of the file's bytes (decoding is never needed)."""
    return hashlib.sha256(data).hexdigest()


def weights_digest(model: Any) -> str:
    """SHA-256 over a module's parameters and buffers: for each state-dict entry in key order, its name,
    dtype and shape, then its bytes.

    Content-addressed: two modules with the same weights give the same digest, whatever the file they
    came from.

    Args:
        model: a `torch.nn.Module` (any device; tensors are copied to the CPU to be hashed).

    Returns:
        The 64-character hex digest.
    """
    import torch

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
