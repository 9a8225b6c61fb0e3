"""te export's own int8 defaults: the speed rule and the size of the selection set (no numpy, no torch).

The int8 recipes themselves (`RECIPES`, `INT8_TARGETS`, `DEFAULT_INT8_TARGET`, `recipe_warning`) are shared
with te predict and te compare, so they live below the commands, in `transfer_engine.onnx.recipes`.
"""

from __future__ import annotations

# Transitional: cli/export.py still reads these two here; import them from transfer_engine.onnx.recipes.
from transfer_engine.onnx.recipes import DEFAULT_INT8_TARGET, INT8_TARGETS  # noqa: F401

DEFAULT_MIN_SPEEDUP = 1.0  # int8 slower than fp32 at batch 1 or 32 is refused: fp32 is the better model then
# Images the int8 gate judges on (`export.gate`): enough for a 99% floor at the agreement a good int8 model
# reaches (docs/export.md, "The int8 gate"); held in memory as float images.
DEFAULT_SELECTION_SIZE = 1000

__all__ = ["DEFAULT_MIN_SPEEDUP", "DEFAULT_SELECTION_SIZE"]
