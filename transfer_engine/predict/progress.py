"""A progress line on stderr for `te predict`: done/total, failed, images/s and ETA.

On a terminal it redraws one line; otherwise (logs, pipes) it prints a line every few seconds.
"""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts images handled and draws the line.

    Args:
        total: images to handle.
        enabled: draw anything at all.
        label: the line's prefix.
        every: seconds between lines when stderr is not a terminal.
    """

    def __init__(self, total: int, *, enabled: bool = True, label: str = "", every: float = 5.0) -> None:
        self.total, self.enabled, self.label, self.every = total, enabled, label, every
        self.done = self.failed = 0
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, handled: int, failed: int = 0) -> None:
        """`handled` more images (of which `failed` were skipped)."""
        self.done += handled
        self.failed += failed
        now = time.perf_counter()
        if self.enabled and self.done < self.total and now - self.last >= (0.2 if self.tty else self.every):
            self.last = now
            self._draw(final=False)

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        left = self.total - self.done
        eta = f" ETA {left / rate:.0f}s" if rate > 0 and left > 0 else ""
        line = f"{self.label}: {self.done}/{self.total} images, {self.failed} failed, {rate:.1f} img/s{eta}"
        sys.stderr.write(("\r" + line.ljust(90) + ("\n" if final else "")) if self.tty else line + "\n")
        sys.stderr.flush()
