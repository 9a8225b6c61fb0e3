"""Every fixed list of choices a command offers, once (no torch): the CLI builds its click.Choice from
these and the code checks against the same tuples, so adding a value is one edit.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")
# How cache rows are stored. The position is the code the compiled ops take (csrc/stored_rows.h): append
# only, never reorder.
STORED_DTYPES = ("fp32", "fp16", "int8")
DEFAULT_STORE = "int8"
# The compute precision of a forward pass, as a feature space records it (tf32: CUDA matmuls).
COMPUTE_PRECISIONS = ("fp32", "fp16", "bf16", "tf32")
# te extract / te compare
EXTRACT_BACKENDS = ("torch", "onnxruntime")
BACKEND_CHOICES = ("auto", *EXTRACT_BACKENDS)
EXTRACT_PRECISIONS = ("fp32", "bf16", "fp16")
# What resizes images (PreprocessSpec.resampler): "pil" first, the reference (torchvision's weights transforms)
RESAMPLERS = ("pil", "torch")
RESAMPLER_CHOICES = ("auto", *RESAMPLERS)
PRECISION_CHOICES = ("auto", *EXTRACT_PRECISIONS)  # te extract, te compare, te finetune
# te export / te predict
QUANTIZE = ("int8", "fp16")
LAYOUTS = ("nhwc", "nchw")  # of the uint8 image input; nhwc (numpy/PIL/OpenCV arrays) is the default
EXPORTERS = ("auto", "torchscript", "dynamo")
PREDICT_PROVIDERS = ("auto", "cuda", "cpu")
# te export --int8-target: the int8 recipes (transfer_engine/onnx/recipes.py RECIPES holds one per name)
INT8_TARGETS = ("portable", "vnni")
# te train / te compare: how a choice is made on small data (core/selection.py)
SELECTIONS = ("auto", "kfold", "val")
# te finetune
FINETUNE_PRECISIONS = PRECISION_CHOICES
# te doctor --leaked: what its manifest does with a val/test image that duplicates a train image
LEAKED_REMEDIES = ("drop", "train")
# te cache export: the files written (npy shards + parquet metadata, or parquet with an embedding column) and
# the values in them (float32 as te's loader decodes the rows, or a space's stored int8 codes with their scales)
FEATURE_EXPORT_FORMATS = ("npy", "parquet")
FEATURE_EXPORT_DTYPES = ("float32", "int8")
# te bench
BENCH_SUITES = ("quick", "full")
STRATEGIES = ("freeze", "no_freeze", "freeze_unfreeze", "unfreeze_milestones", "lora")
# --strategy lora: which linear layers of a transformer backbone get adapters (finetune/lora.py)
LORA_TARGETS = ("qkv", "proj", "mlp")
OPTIMIZERS = ("adamw", "sgd")
AUGMENTS = ("crop+flip", "crop", "none")
KEEP = ("best", "last", "final")
# auto: search when neither --epochs nor --lr is given, else train that one recipe
RECIPES = ("auto", "schedule", "search", "fixed")
