"""The one progress line te's commands draw on stderr (extract, predict, finetune; each formats its own text).

On a terminal the line is redrawn in place, at most every 0.2 s; otherwise (CI logs, pipes) a plain line
is printed every `every` seconds, so a log neither floods nor stays silent for minutes.
"""

from __future__ import annotations

import sys
import time

WIDTH = 100  # a redrawn line is padded to this, so a shorter one wipes a longer one


class ProgressLine:
    """Throttles and draws one line. `due()` says whether a new line may be drawn now (and starts the next
    wait); `draw()` draws it; `message()` prints a line of its own, clearing a redrawn one first."""

    def __init__(self, *, enabled: bool = True, every: float = 5.0) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.2 if self.tty else every
        self.start = self.last = time.perf_counter()  # the first line after `every` seconds, not at once

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.start, 1e-9)

    def due(self) -> bool:
        now = time.perf_counter()
        if not self.enabled or now - self.last < self.every:
            return False
        self.last = now
        return True

    def draw(self, text: str, *, final: bool = False, plain_suffix: str = "") -> None:
        """`text` as the progress line; `plain_suffix` is added only to plain (non-terminal) lines."""
        if self.tty:
            sys.stderr.write("\r" + text.ljust(WIDTH) + ("\n" if final else ""))
        else:
            sys.stderr.write(text + plain_suffix + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(("\r" + " " * WIDTH + "\r" if self.tty else "") + text + "\n")
            sys.stderr.flush()
