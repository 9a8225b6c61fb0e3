"""int8 of a `te finetune --qat` run: the model it trained, written by onnxruntime's quantizer and checked
against that model.

A QAT run trained its int8 simulation (`onnx.simulate`): weights and biases already on their int8 grids,
activations at the scales recorded in the run. So there is nothing to search: onnxruntime quantizes the
exported graph with the run's recipe, each activation it quantizes takes the scale and zero point the run
trained with (matched to its module call by value, `onnx.simulate.tensor_overrides`), and the weights and
biases quantize without loss. The gate is the same statement as for post-training int8 (`export.gate`), made
against the model the run trained and evaluated, in PyTorch: top-1 agreement on the selection images, its
95% lower bound against the floor; then the speed rule at batch 1 and 32. The reference is the simulation's
evaluation, which computes onnxruntime's integer arithmetic (`onnx.simulate.QuantSim`): where the kernels are
exact the file agrees on every image (docs/export.md has the measurements). Its logits are
quantized, so its top two classes can tie at its own resolution: where they are within one step of its
logits, either class is the model's answer and counts as agreeing (the report counts them). Nothing is kept
in float: a QAT model that misses the gate is refused with the reason (te's float fallback is for
post-training int8, `export.int8_budget`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from transfer_engine.core import cpu
from transfer_engine.core.progress import Say, say_of
from transfer_engine.export.gate import AgreementGate
from transfer_engine.export.int8_budget import Int8Outcome, gate_entry, more_images, timed
from transfer_engine.export.parity import near_ties
from transfer_engine.onnx.int8 import Quantizer, int8_nodes
from transfer_engine.onnx.recipes import RECIPES
from transfer_engine.onnx.runtime import import_ort
from transfer_engine.onnx.simulate import EXACT_BATCH, QuantSim, SimSpec, tensor_overrides


def simulated_logits(model: Any, spec: SimSpec, images: np.ndarray, batch: int = EXACT_BATCH) -> np.ndarray:
    """The logits of `model`'s int8 simulation on `images`, in onnxruntime's integer arithmetic (what the QAT
    run evaluated)."""
    import torch

    out = []
    with QuantSim(model, spec), torch.inference_mode():
        for start in range(0, len(images), batch):
            out.append(model(torch.from_numpy(np.ascontiguousarray(images[start:start + batch]))).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def logit_step(spec: SimSpec) -> float:
    """One step of the simulation's quantized logits: top classes this close are a tie at its resolution (0 when
    the logits are not quantized: only exact ties)."""
    return next((p.scale for p in spec.points if p.tensor.startswith("logits")), 0.0)


def quantize_as_trained(fp32_model: Path, out: Path, calibration: np.ndarray, selection: np.ndarray, *, model: Any,
                        qat: dict[str, Any], gate: AgreementGate, min_speedup: float, workdir: Path,
                        input_name: str = "images", output_name: str = "logits", selection_source: str = "",
                        calibration_source: str = "", say: Say = say_of(False)) -> Int8Outcome:
    """Write the int8 model a QAT run trained (`qat`: the run's QAT_JSON; `model`: its PyTorch model, the
    simulation not installed) to `out`, and judge it against that model's simulation on `selection`.

    Returns:
        The `Int8Outcome` (method "qat"; no float nodes).

    Raises:
        QuantizationError: onnxruntime's tools failed.
        UsageError: the exported graph is not the one the run trained (a tensor without a trained scale).
    """
    import_ort()
    spec = SimSpec.from_dict(qat["simulation"])
    recipe = RECIPES[spec.recipe]
    outcome = Int8Outcome(recipe.to_dict(), cpu.describe(), method="qat",
                          selection=f"{len(selection)} selection images ({selection_source}) (top-1 against the "
                                    "model the --qat run trained, its int8 simulation in PyTorch; never calibration or "
                                    "test images)",
                          calibration=f"the scales the --qat run trained with, calibrated on "
                                      f"{qat.get('calibration', {}).get('images', '?')} of its train images")
    quantizer = Quantizer(fp32_model, calibration, recipe, workdir, input_name)
    quantizer.quantize(out, [])  # which activations onnxruntime quantizes in this graph
    quantizer.set_activations(tensor_overrides(model, spec, quantizer.prepared, out, calibration))
    quantizer.quantize(out, [])
    outcome.quantized_nodes = int8_nodes(out)
    if not gate.supported_by(len(selection)):
        outcome.failure = gate.too_few(len(selection), why_none=selection_source)
        outcome.gate = gate_entry(gate, {"agreed": 0, "images": len(selection)})
        return outcome
    reference = simulated_logits(model, spec, selection)
    same = quantizer.logits(out, output_name, images=selection).argmax(1) == reference.argmax(1)
    ties = near_ties(reference, logit_step(spec))
    agreed = int((same | ties).sum())
    verdict = gate.verdict(agreed, len(selection))
    outcome.steps.append({"float_groups": 0, "float_nodes": 0, **verdict, "same_class": int(same.sum()),
                          "ties": int((~same & ties).sum())})
    outcome.gate = gate_entry(gate, outcome.steps[-1])
    tied = outcome.steps[-1]["ties"]
    say(f"int8 as the --qat run trained it ({recipe.name} recipe): top-1 agreement with its PyTorch model "
        f"{gate.describe(agreed, len(selection))} on selection images"
        + (f" ({tied} of them ties of its quantized logits, where either class is its answer)" if tied else "")
        + (" (meets the gate)" if verdict["passed"] else ""))
    if not verdict["passed"]:
        outcome.failure = (f"the int8 file agrees with the model the --qat run trained "
                           f"{gate.describe(agreed, len(selection))} < {gate.floor:.1%} on the selection images"
                           + more_images(outcome.gate))
        return outcome
    return timed(outcome, quantizer, out, min_speedup, "the --qat model in int8")


__all__ = ["logit_step", "quantize_as_trained", "simulated_logits"]
