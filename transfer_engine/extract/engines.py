"""Execution backends for extraction: one engine per backend, called the same way.

    engine(images: float32 [N, 3, S, S]) -> float32 features [N, dim] on the extraction device

`TorchEngine` runs the backbone eagerly (channels_last, autocast for bf16/fp16). `OrtEngine` runs the
same backbone exported to ONNX (`onnx.backbone.exported_backbone`) through onnxruntime: on CPUs without
native bf16 its fp32 kernels can be much faster than PyTorch's for the same features, by how much depends
on the CPU and the backbone (docs/extract.md, "Execution backend"). Which engine a run uses is therefore
measured, not assumed: `transfer_engine.extract.backend`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transfer_engine.backbones.spec import Backbone
from transfer_engine.core.choices import BACKEND_CHOICES, EXTRACT_BACKENDS as BACKENDS  # noqa: F401  (the module's API)
from transfer_engine.core.runtime import autocast_context



def prepare_model(backbone: Backbone, device: torch.device) -> torch.nn.Module:
    """The backbone's model on `device`, in eval mode, channels_last (faster convolutions on CPU and GPU)."""
    model = backbone.model.to(device).eval()
    return model.to(memory_format=torch.channels_last)


class TorchEngine:
    """The backbone in eager PyTorch, in `precision` ("fp32", "bf16" or "fp16" autocast)."""

    backend = "torch"

    def __init__(self, backbone: Backbone, device: torch.device, precision: str = "fp32") -> None:
        self.device = device
        self.precision = precision
        self.model = prepare_model(backbone, device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast_context(self.device, self.precision):
            return self.model(x).float()


class OrtEngine:
    """The backbone's ONNX graph (input "images", output "features") in onnxruntime, fp32.

    On a CUDA device the session runs on onnxruntime-gpu's CUDA provider (and refuses to start
    silently on the CPU instead: a backend chosen for a GPU must run there). onnxruntime reads the
    images from the torch tensor's memory and writes the features into a torch tensor on the same
    device (IO binding): on a GPU nothing crosses to the host, on the CPU no numpy copy is made.
    """

    backend = "onnxruntime"
    precision = "fp32"

    def __init__(self, model_path: str | Path, device: torch.device, threads: int | None = None) -> None:
        from transfer_engine.onnx.runtime import CPU, CUDA, RuntimeUnavailableError, open_session

        provider = CUDA if device.type == "cuda" else CPU
        index = _device_index(device)
        self.session = open_session(str(model_path), provider, threads, device_id=index)
        if self.session.provider != provider:
            raise RuntimeUnavailableError(f"onnxruntime: {self.session.note}")
        self.device = torch.device(device.type, index) if device.type == "cuda" else device
        self._ort_device = ("cuda", index) if device.type == "cuda" else ("cpu", 0)
        self.dim = _declared_dim(self.session.session)  # None: a symbolic dim, learnt from the first run

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from transfer_engine.onnx.export import FEATURES, INPUT

        x = images.detach().to(self.device, torch.float32).contiguous()
        binding = self.session.session.io_binding()
        binding.bind_input(INPUT, *self._ort_device, np.float32, tuple(x.shape), x.data_ptr())
        out = None
        if self.dim is None:
            binding.bind_output(FEATURES, *self._ort_device)  # onnxruntime allocates; the dim is then known
        else:
            out = torch.empty((x.shape[0], self.dim), dtype=torch.float32, device=self.device)
            binding.bind_output(FEATURES, *self._ort_device, np.float32, tuple(out.shape), out.data_ptr())
        if self.device.type == "cuda":
            # onnxruntime runs on its own CUDA stream: torch's work writing `x` (and last using `out`'s
            # memory) must be done first. Run() synchronizes its own stream before it returns.
            torch.cuda.current_stream(self.device).synchronize()
        self.session.session.run_with_iobinding(binding)
        if out is None:
            first = torch.from_numpy(binding.copy_outputs_to_cpu()[0])  # once per engine, this batch only
            self.dim = first.shape[1]
            return first.to(self.device)
        return out


def _device_index(device: torch.device) -> int:
    """The CUDA device's number (the current device for a bare "cuda"), 0 on the CPU."""
    if device.type != "cuda":
        return 0
    return device.index if device.index is not None else torch.cuda.current_device()


def _declared_dim(session) -> int | None:
    """The feature dimension the graph declares for "features" (None when it is symbolic)."""
    from transfer_engine.onnx.export import FEATURES

    for output in session.get_outputs():
        if output.name == FEATURES and len(output.shape) == 2 and isinstance(output.shape[1], int):
            return output.shape[1]
    return None
