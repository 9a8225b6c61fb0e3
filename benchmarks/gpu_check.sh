#!/usr/bin/env bash
# The GPU checks of te extract's device path (docs/gpu.md), for a machine with an NVIDIA GPU:
#
#     bash benchmarks/gpu_check.sh            # from the repository, with te's .venv (a CUDA build of torch)
#
# Not run by CI (CI has no GPU; `te bench` runs only benchmarks/bench_*.py). It builds te's extension
# with its CUDA kernels, runs every test marked `cuda`, and times decode + preprocess + compute on real
# JPEGs for ResNet-50 and EfficientNet-Lite0. Nothing here downloads anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

nvidia-smi -L
"$PY" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, torch.cuda.get_device_name())"

# te's CUDA kernels (quantize on the device): TE_FORCE_CUDA fails loudly instead of building C++ only.
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TE_FORCE_CUDA=1 .venv/bin/pip install -q --no-deps --no-build-isolation -e .
"$PY" -c "from transfer_engine import extension; i = extension.info(); print(i); assert i['cuda_compiled'], 'built without CUDA'"
# onnxruntime's CUDA provider needs onnxruntime-gpu (te's gpu extra); without it those tests skip.
"$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"

# Every CUDA test (-m cuda replaces the default -m 'not slow'); TE_REQUIRE_EXT: no silent fallback.
TE_REQUIRE_EXT=1 "$PY" -m pytest -q -p no:xdist -m cuda -rs tests

"$PY" benchmarks/gpu_extract_rate.py --device cuda --images 512 --batch 64 --backbones resnet50,efficientnet_lite0
