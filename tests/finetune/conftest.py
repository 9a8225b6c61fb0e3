"""What the fine-tuning tests share: one-thread settings for te subprocesses, a tiny configuration, and
linear_run.py (the te train stand-in) on the import path."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # linear_run.py, the te train stand-in

# One thread per process (for te subprocesses; tests/conftest.py's one_thread fixture does it in this one):
# on the shared 2-core CI machine two OpenMP threads per process run far slower than one once anything
# else is busy, and the kill/resume test wants identical thread counts anyway.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--backbone", "mobilenet_v3_small", "--weights", "none", "--data", "builtin:digits",
        "--input-size", "32"]

