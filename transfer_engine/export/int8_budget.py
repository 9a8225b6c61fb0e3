"""int8 within an accuracy budget: float kept where int8 costs accuracy (te export's rule; the recipes:
`onnx.recipes`, the quantizer it searches with: `onnx.int8.Quantizer`).

`quantize_within_budget` quantizes everything first. If the gate (`export.gate.AgreementGate`: the 95%
lower bound of top-1 agreement with the fp32 model on the selection images reaches the floor) is missed,
it ranks the quantized nodes in groups (a Conv/Gemm/MatMul and what follows it up to the next one:
activation, residual Add, pool) by what each costs the model's output when it alone is int8 (every other
group in float, on ISOLATED_IMAGES calibration images); keeps the 1, 2, 4, ... most costly groups in
float until the gate is met, then bisects down to the fewest that meet it. The mix must also be faster
than fp32 at batch 1 and at batch 32 (`min_speedup`), else int8 is refused: fp32 is then the better model.

Three disjoint sets of images: calibration (activation ranges, the ranking), selection (every mix is
judged on it) and the caller's test images, which nothing here reads: they report the chosen model once.
docs/export.md has the measurements behind these choices.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transfer_engine.core import cpu
from transfer_engine.core.progress import Say, say_of
from transfer_engine.export.gate import AgreementGate
from transfer_engine.core.configs.export import DEFAULT_MIN_SPEEDUP
from transfer_engine.onnx.int8 import Quantizer, int8_nodes
from transfer_engine.onnx.recipes import Int8Recipe
from transfer_engine.onnx.runtime import import_ort


# Where post-training int8 is refused, the way that made Lite0 pass on the digits and the icons (docs/export.md)
QAT_HINT = ("; `te finetune --from RUN --qat` trains the int8 model itself, and te export then writes it with "
            "no node in float")


@dataclass
class Int8Outcome:
    """What `quantize_within_budget` did (the "int8" entry of the parity report).

    Attributes:
        recipe: the `Int8Recipe` as a dict; checked_on: `core.cpu.describe()` of this machine.
        method: "ptq" (post-training: calibrated here, float kept where int8 costs agreement) or "qat" (the
            int8 model a `te finetune --qat` run trained: `export.int8_qat`).
        passed: a mix met the gate and the speed rule; failure: why not (None when passed).
        qat_advised: the failure is one quantization-aware fine-tuning can mend (agreement or speed, not too
            few images), and its text says so (`QAT_HINT`).
        quantized_nodes: nodes computing on int8 inputs in full int8; float_groups / float_nodes: the node
            groups (see `onnx.int8.Quantizer.rank_groups`) and the nodes kept in float.
        steps: every mix tried: {float_groups, float_nodes, agreed, images, agreement, lower_bound, passed}.
        gate: the chosen mix's verdict on the selection images (`AgreementGate.verdict`), and
            images_needed: how many images its agreement rate would need to pass (None: none would).
        sensitivity: the most costly groups: {node, op, isolated_error, rounding_error, writes_output, nodes}
            (`onnx.int8.Quantizer.rank_groups`, `onnx.int8.Quantizer.isolated_errors`).
        speed: {batches: {"1": {...}, "32": {...}}, speedup (the least of them), min_speedup}; each batch
            {fp32_images_per_second, int8_images_per_second, speedup}.
        selection: what the steps were judged on; calibration: what the ranges and the ranking came from.
    """

    recipe: dict[str, Any]
    checked_on: dict[str, Any]
    method: str = "ptq"
    passed: bool = False
    failure: str | None = None
    qat_advised: bool = False
    quantized_nodes: int = 0
    float_groups: int = 0
    float_nodes: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    gate: dict[str, Any] = field(default_factory=dict)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    speed: dict[str, Any] = field(default_factory=dict)
    selection: str = ""
    calibration: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def quantize_within_budget(fp32_model: Path, out: Path, calibration: np.ndarray, selection: np.ndarray, *,
                           recipe: Int8Recipe, gate: AgreementGate, min_speedup: float = DEFAULT_MIN_SPEEDUP,
                           workdir: Path, input_name: str = "images", output_name: str = "logits",
                           selection_source: str = "", calibration_source: str = "",
                           say: Say = say_of(False)) -> Int8Outcome:
    """Quantize `fp32_model` to int8 with `recipe`, keeping in float the fewest sensitive nodes whose
    top-1 agreement with the fp32 model on the `selection` images meets `gate`.

    Args:
        fp32_model: the fp32 ONNX file; out: where the int8 model goes (written even when it fails, for
            the caller to measure and report).
        calibration: normalized float32 images [N, 3, S, S] for the activation ranges and the ranking.
        selection: other images of the same kind (no calibration image, no test image): each mix is judged
            by its agreement with the fp32 model on them. Labels are not needed.
        recipe: how to quantize; gate: the agreement the chosen mix must show.
        min_speedup: int8 images/s over fp32 that the mix must reach at batch 1 and at batch 32 (0 turns
            the speed rule off).
        workdir: a scratch folder; say: progress lines; selection_source / calibration_source: where the
            images came from, for the report.

    Returns:
        The `Int8Outcome` (the file at `out` is the last mix: the chosen one when it passed).

    Raises:
        QuantizationError: onnxruntime's tools failed.
    """
    import_ort()
    outcome = Int8Outcome(recipe.to_dict(), cpu.describe(),
                          selection=f"{len(selection)} selection images{_of(selection_source)} (top-1 against the "
                                    "fp32 model; never calibration or test images)",
                          calibration=f"{len(calibration)} calibration images{_of(calibration_source)}")
    quantizer = Quantizer(fp32_model, calibration, recipe, workdir, input_name)
    reference = quantizer.logits(quantizer.fp32, output_name, images=selection).argmax(1) if len(selection) else None

    def attempt(groups: list[dict[str, Any]]) -> bool:
        float_nodes = [n for g in groups for n in g["nodes"]]
        quantizer.quantize(out, float_nodes)
        agreed = int((quantizer.logits(out, output_name, images=selection).argmax(1) == reference).sum())
        verdict = gate.verdict(agreed, len(selection))
        outcome.steps.append({"float_groups": len(groups), "float_nodes": len(float_nodes), **verdict})
        say(f"int8 with {len(groups)} of {len(ranked) or 'the'} groups ({len(float_nodes)} nodes) in float: top-1 "
            f"agreement {gate.describe(agreed, len(selection))} on selection images"
            + (" (meets the gate)" if verdict["passed"] else ""))
        return verdict["passed"]

    ranked: list[dict[str, Any]] = []
    top = 0
    if not gate.supported_by(len(selection)):  # no search on evidence that cannot pass: full int8, and why
        if len(selection):
            attempt([])
        else:
            quantizer.quantize(out, [])
        outcome.quantized_nodes = int8_nodes(out)
        outcome.gate = gate_entry(gate, outcome.steps[-1] if outcome.steps else {"agreed": 0, "images": 0})
        outcome.failure = gate.too_few(len(selection), why_none=selection_source)
        return outcome
    chosen: list[dict[str, Any]] | None = [] if attempt([]) else None
    outcome.quantized_nodes = int8_nodes(out)
    if chosen is None:
        ranked = quantizer.rank_groups(out, output_name, quantizer.logits(quantizer.fp32, output_name))
        outcome.sensitivity = [{k: g[k] for k in ("node", "op", "isolated_error", "rounding_error", "writes_output")}
                               | {"nodes": len(g["nodes"])}
                               for g in ranked[:10]]
        # Every group in float is the fp32 model with Q/DQ pairs left, not an int8 model: never a candidate.
        top = len(ranked) - 1
        good, bad, k = None, 0, 1
        while k <= top:                 # 1, 2, 4, ... groups in float until the gate is met
            if attempt(ranked[:k]):
                good = k
                break
            bad, k = k, (top + 1 if k == top else min(k * 2, top))
        if good is not None:
            while good - bad > 1:       # then the fewest that still meet it
                mid = (good + bad) // 2
                if attempt(ranked[:mid]):
                    good = mid
                else:
                    bad = mid
            chosen = ranked[:good]
    if chosen is None:
        best = max(outcome.steps, key=lambda s: s["agreed"])
        outcome.gate = gate_entry(gate, best)
        outcome.failure = (f"no mix of int8 and float nodes meets the gate: the best, {best['float_groups']} of "
                           f"{len(ranked)} node groups in float, agrees {gate.describe(best['agreed'], best['images'])} "
                           f"< {gate.floor:.1%} (recipe {recipe.name}; {len(outcome.steps)} mixes tried, up to "
                           f"{max(top, 0)} groups in float; all of them would be the fp32 model)"
                           + more_images(outcome.gate) + QAT_HINT)
        outcome.qat_advised = True
        return outcome
    outcome.float_groups = len(chosen)
    outcome.float_nodes = [n for g in chosen for n in g["nodes"]]
    chosen_step = next(s for s in reversed(outcome.steps) if s["passed"] and s["float_groups"] == len(chosen))
    outcome.gate = gate_entry(gate, chosen_step)
    if outcome.steps[-1]["float_groups"] != len(chosen):  # the bisection ended on another mix: redo this one
        quantizer.quantize(out, outcome.float_nodes)
    kept = f"{outcome.float_groups} of {len(ranked)} node groups in float" if ranked else "all int8"
    outcome = timed(outcome, quantizer, out, min_speedup, f"the model meeting the gate ({kept})")
    if outcome.failure:
        outcome.failure += QAT_HINT
        outcome.qat_advised = True
    return outcome


def timed(outcome: Int8Outcome, quantizer: Quantizer, out: Path, min_speedup: float, what: str) -> Int8Outcome:
    """The speed rule, for a model that met the gate: int8 `out` timed against fp32 at batch 1 and 32; it
    passes when `min_speedup` is 0 or reached at both, else the outcome says why `what` is refused."""
    outcome.speed = quantizer.speed(out, min_speedup)
    slow = [b for b, m in outcome.speed["batches"].items() if m["speedup"] < min_speedup]
    if min_speedup > 0 and slow:
        at = ", ".join(f"{outcome.speed['batches'][b]['speedup']:.2f}x at batch {b}" for b in slow)
        outcome.failure = (f"{what} runs at {at} of fp32 speed on this CPU, below --min-int8-speedup "
                           f"{min_speedup:g}: fp32 is the better model here")
        return outcome
    outcome.passed = True
    return outcome


def _of(source: str) -> str:
    return f" ({source})" if source else ""


def gate_entry(gate: AgreementGate, step: dict[str, Any]) -> dict[str, Any]:
    """The gate's verdict on one step ({agreed, images}), with the images its agreement rate would need."""
    entry = gate.verdict(step["agreed"], step["images"])
    entry["images_needed"] = gate.images_needed(entry["agreement"] or 0.0)
    return entry


def more_images(entry: dict[str, Any]) -> str:
    """How many selection images the agreement rate of a `gate_entry` would need to pass, when more images
    could pass it."""
    needed = entry["images_needed"]
    if needed is None:
        return ""
    return (f"; at its {entry['agreement']:.1%} agreement the bound would reach {entry['floor']:.1%} with {needed} "
            "selection images "
            "(--selection-data SRC, --selection-size N)")


__all__ = ["Int8Outcome", "gate_entry", "more_images", "quantize_within_budget", "timed"]
