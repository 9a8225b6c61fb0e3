"""Every fixed list of choices a command offers, once (no torch): the CLI builds its click.Choice from
these and the code checks against the same tuples, so adding a value is one edit.

Lists owned by the extract/cache/export layers still live beside their code; they move here as those
modules are touched (issue #17).
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")
# te finetune
FINETUNE_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STRATEGIES = ("freeze", "no_freeze", "freeze_unfreeze", "unfreeze_milestones")
OPTIMIZERS = ("adamw", "sgd")
AUGMENTS = ("crop+flip", "crop", "none")
KEEP = ("best", "last")
# auto: search when neither --epochs nor --lr is given, else train that one recipe
RECIPES = ("auto", "search", "fixed")
