"""Shared fixtures of the fine-tuning tests: one compute thread, a small real linear run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # linear_run.py, the te train stand-in

# One thread per process: on the shared 2-core CI machine two OpenMP threads per process run far slower
# than one once anything else is busy, and the kill/resume test wants identical thread counts anyway.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--backbone", "mobilenet_v3_small", "--weights", "none", "--data", "builtin:digits",
        "--input-size", "32"]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
