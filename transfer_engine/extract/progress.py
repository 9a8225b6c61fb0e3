"""A progress line on stderr: done/total, reused, failed, images/s and ETA.

On a terminal it redraws one line; otherwise (CI logs, pipes) it prints a line every few seconds.
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, *, enabled: bool = True, label: str = "", every: float = 5.0) -> None:
        self.total = total
        self.enabled = enabled
        self.label = label
        self.every = every
        self.done = self.reused = self.failed = 0
        self.start = time.perf_counter()
        self.last = self.start  # the first line after `every` seconds, not at once
        self.tty = sys.stderr.isatty()

    def update(self, done: int = 0, reused: int = 0, failed: int = 0) -> None:
        self.done += done
        self.reused += reused
        self.failed += failed
        now = time.perf_counter()
        unfinished = self.done + self.reused + self.failed < self.total  # close() draws the last line
        if self.enabled and unfinished and now - self.last >= (0.2 if self.tty else self.every):
            self.last = now
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        handled = self.done + self.reused + self.failed
        rate = self.done / elapsed
        left = self.total - handled
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and left > 0 else ""
        line = (f"{self.label}: {handled}/{self.total} (new {self.done}, reused {self.reused}, "
                f"failed {self.failed}) {rate:.1f} img/s {eta}").rstrip()
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100) + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and (self.tty or self.last < time.perf_counter()):
            self._draw(final=True)
