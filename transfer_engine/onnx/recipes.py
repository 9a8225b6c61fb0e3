"""The int8 recipes `te export --int8-target` offers (te compare measures the default), and what te predict
says about them (no numpy, no torch).

    portable  QDQ, uint8 activations, int8 weights per output channel, 7-bit weights (onnxruntime's
              `reduce_range`) in the GEMM-based convolutions (pointwise, dense, the stem) and 8-bit ones in
              the depthwise convolutions. In a GEMM every u8 x s8 pair sum then fits in int16, so the
              integer kernels of CPUs without VNNI (vpmaddubsw saturates at 32,767) compute exactly what
              VNNI CPUs compute. onnxruntime's depthwise kernels widen both operands to 16 bits before they
              multiply (MLAS `MlasConvDepthwiseKernelAvx2`; no pair sum in int16), so 8-bit depthwise
              weights are exact on both families too (on AVX2 their outputs match the float emulation of
              exact int32 accumulation as closely as the 7-bit ones; 8-bit weights in the stem do not).
              A model checked on one x86 family gives the same integer results on the other. The default.
    vnni      the same with full 8-bit weights: slightly finer weights, exact only on VNNI CPUs (AVX512-VNNI,
              AVX-VNNI); on AVX2 its products saturate and top-1 agreement falls far below the gate.

The measurements behind both: docs/export.md, "int8 and CPU families: the recipe".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from transfer_engine.core import cpu
from transfer_engine.core.choices import INT8_TARGETS
from transfer_engine.core.configs.export import DEFAULT_INT8_TARGET


@dataclass(frozen=True)
class Int8Recipe:
    """How a model is quantized to int8.

    Attributes:
        name: the recipe's name (`te export --int8-target`).
        reduce_range: 7-bit weights (exact on CPUs without VNNI) instead of 8-bit.
        depthwise_full_range: with reduce_range, the depthwise convolutions' weights keep 8 bits (their
            kernels are exact with them on every x86 family): finer weights where they cost nothing.
        exact_on: the `core.cpu` int8 families whose kernels compute this recipe's products exactly.
        format / activations / weights / per_channel / calibration: onnxruntime's settings, as recorded.
    """

    name: str
    reduce_range: bool
    exact_on: tuple[str, ...]
    format: str = "QDQ"
    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    calibration: str = "minmax"
    depthwise_full_range: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def weight_bits(self) -> str:
        """The weights' width in words: "8-bit", "7-bit" or "7-bit (8-bit in depthwise convolutions)"."""
        if not self.reduce_range:
            return "8-bit"
        return "7-bit" + (" (8-bit in depthwise convolutions)" if self.depthwise_full_range else "")


RECIPES = {
    "portable": Int8Recipe("portable", reduce_range=True, exact_on=(cpu.X86_VNNI, cpu.X86_NO_VNNI),
                           depthwise_full_range=True),
    "vnni": Int8Recipe("vnni", reduce_range=False, exact_on=(cpu.X86_VNNI,)),
}
# --int8-target offers core.choices.INT8_TARGETS (the CLI and the config are built before this module loads);
# a recipe added here and not there, or the other way round, fails at import.
assert tuple(RECIPES) == INT8_TARGETS, f"onnx/recipes.py RECIPES {tuple(RECIPES)} != core.choices.INT8_TARGETS"


def recipe_warning(quantization: dict[str, Any] | None, here: str | None = None) -> str | None:
    """What te predict says before running an int8 model on this machine (None: nothing to say).

    Args:
        quantization: the model's te.quantization metadata ({recipe, checked_on, ...}), or None for
            int8 models exported before te recorded it.
        here: this machine's int8 family (default: `core.cpu.int8_family()`).
    """
    here = here or cpu.int8_family()
    if not quantization:
        return ("this int8 model records no recipe or CPU it was checked on (exported by an older te); re-export "
                "it with te export to have its agreement checked for this machine")
    recipe = quantization.get("recipe", {})
    checked = quantization.get("checked_on", {}).get("int8_family", "unknown")
    if here == checked:
        return None
    if here not in recipe.get("exact_on", ()):
        return (f"this int8 model ({recipe.get('name', '?')} recipe, 8-bit weights) was checked on a {checked} CPU; "
                f"this one is {here}, where its integer kernels can saturate and predictions may be wrong: "
                "re-export with --int8-target portable")
    return (f"this int8 model was checked on a {checked} CPU and runs on {here}: its {recipe.get('name', '?')} "
            "recipe computes the same integer products on both, but its agreement was not measured here")


__all__ = ["DEFAULT_INT8_TARGET", "INT8_TARGETS", "Int8Recipe", "RECIPES", "recipe_warning"]
