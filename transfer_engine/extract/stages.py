"""Where te extract's time goes: seconds per stage, summed over the threads that run it.

`te extract --json` reports them as `stages` so that a user can see what limits a run: reading and
hashing the files, decoding them, preprocessing (resize, crop, normalize), the model, storing rows
(quantization, durable append, index commit), and writing the data set record. Stages that run in the
decode threads (read, hash, decode, preprocess) are sums over those threads, so together they can
exceed the run's wall time; `waiting_for_images` is the time the model thread sat idle waiting for
decoded images (large: the input pipeline is the bottleneck; near zero: the model is).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

STAGES = ("setup", "read", "hash", "decode", "preprocess", "waiting_for_images", "compute", "store", "dataset")


class StageClock:
    """Thread-safe seconds per stage (a plain dict would lose updates made at once by two threads)."""

    def __init__(self) -> None:
        self._seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self._seconds[stage] = self._seconds.get(stage, 0.0) + seconds

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def seconds(self) -> dict[str, float]:
        """Seconds per stage, rounded to the millisecond, in pipeline order."""
        with self._lock:
            return {k: round(v, 3) for k, v in self._seconds.items()}


class _Untimed:
    """A clock that records nothing (FeatureExtractor used on its own)."""

    @contextmanager
    def timing(self, stage: str) -> Iterator[None]:
        yield

    def add(self, stage: str, seconds: float) -> None:
        pass


UNTIMED = _Untimed()
