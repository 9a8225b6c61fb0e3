"""`te finetune --qat`: fine-tune the int8 model onnxruntime will run, not the float one.

Before the first step, the start is quantized by onnxruntime with the `--int8-target` recipe, calibrated on
train images, and that int8 model is simulated in PyTorch (`onnx.simulate`): BatchNorm folded and frozen,
activations fake-quantized at onnxruntime's scales, weights and biases on their int8 grids. Every forward
of the run, training and evaluation alike, computes the int8 model; its val and test accuracies are the
int8 model's, evaluated in onnxruntime's integer arithmetic (training steps use float fake quantization and
straight-through gradients: `onnx.simulate.QuantSim`). The run directory holds the weights already on their
grids and QAT_JSON (the simulation), from which te export writes an int8 file that computes the same
(`export.builder`).

Why quantization-aware training: post-training quantization of EfficientNet-Lite0 loses agreement with the
float model to activation rounding that no choice of float layers buys back (docs/export.md, "Quantization-aware
fine-tuning", has the measurements); training the int8 model directly lets the weights adapt to it.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.configs.export import DEFAULT_OPSET
from transfer_engine.onnx.recipes import RECIPES
from transfer_engine.onnx.simulate import QuantSim, SimSpec, derive, fold_batchnorms
from transfer_engine.runs import QAT_JSON

CALIBRATION_IMAGES = 128  # train images the activation scales are calibrated on (te export's default too)
PRECISION_REASON = "--qat: onnxruntime's int8 arithmetic is simulated in fp32"


@dataclass
class Qat:
    """The simulation installed on a run's model, and where its scales came from."""

    spec: SimSpec
    sim: QuantSim
    calibration_images: int

    def describe(self) -> str:
        recipe = RECIPES[self.spec.recipe]
        return (f"finetune: --qat: training the int8 model onnxruntime runs ({recipe.name} recipe, {recipe.weight_bits()} "
                f"weights): {len(self.spec.points)} activations at the scales onnxruntime calibrated on "
                f"{self.calibration_images} train images, {len(self.spec.layers)} weight layers, "
                f"{len(self.spec.folded)} BatchNorms folded; in fp32")

    def record(self) -> dict[str, Any]:
        """The run's QAT_JSON: what te export needs to write this run's int8 model."""
        return {"recipe": RECIPES[self.spec.recipe].to_dict(), "simulation": self.spec.to_dict(),
                "calibration": {"images": self.calibration_images, "source": "train split, no augmentation"}}


def prepare(model: torch.nn.Module, train_set: Any, cfg: FinetuneConfig, crop_size: int) -> Qat:
    """Fold `model`'s BatchNorms, read the int8 simulation off onnxruntime and install it (before the trainer
    is built: the optimizer must see the parametrized weights).

    Args:
        model: the start (a `Classifier`, on the CPU, eval mode).
        train_set: the train split's `finetune.data.ImageSet` (its images, without augmentation, calibrate).
        cfg: the run's config (`int8_target`).
        crop_size: the size the model sees.
    """
    model.eval()
    picks = np.linspace(0, len(train_set) - 1, min(CALIBRATION_IMAGES, len(train_set))).round().astype(int)
    calibration = np.stack([train_set[(int(i), None)][0].numpy() for i in picks]).astype(np.float32)
    folded = fold_batchnorms(model, torch.from_numpy(calibration[:2]))
    with tempfile.TemporaryDirectory(prefix="te-qat-") as work:
        spec = derive(model, calibration, RECIPES[cfg.int8_target], Path(work), folded=folded, crop_size=crop_size,
                      opset=DEFAULT_OPSET)
    return Qat(spec, QuantSim(model, spec).install(), len(calibration))


__all__ = ["PRECISION_REASON", "QAT_JSON", "Qat", "prepare"]
