"""How te's commands report progress: one keyword, one type, and the one progress line they draw.

Every command's Python function takes `progress=` (`Progress`):
- True: its lines on stderr, and on a terminal its progress line (extract, predict, finetune) redrawn in place;
- False or None: nothing;
- a function taking one line (`Say`): every line is handed to it, the progress line too, as plain lines at
  the pace a log gets them (a notebook, a logger, a test collecting lines).
Inside a command the value is resolved once (`say_of`) and handed down as `say: Say`; what draws the
progress line takes the `Progress` value itself (`ProgressLine`).

On a terminal the line is redrawn in place, at most every 0.2 s; otherwise (CI logs, pipes, a function)
a plain line is given every `every` seconds, so a log neither floods nor stays silent for minutes.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Callable, Optional, Union

Say = Callable[[str], None]
"""Where progress lines go: called with each line (no newline)."""

Progress = Union[bool, None, Say]
"""What a command's `progress=` takes: True (stderr), False/None (nothing) or a `Say` (see the module)."""

WIDTH = 100  # a redrawn line is padded to this, so a shorter one wipes a longer one


def to_stderr(line: str) -> None:
    """A line on stderr (the stream of the moment, so a caller's redirection is honoured)."""
    print(line, file=sys.stderr, flush=True)


def say_of(progress: Progress) -> Say:
    """The function a command hands its lines to, for its `progress=` value."""
    if callable(progress):
        return progress
    return to_stderr if progress else _nothing


def _nothing(line: str) -> None:
    pass


def renamed(given: Progress, old: str, value: Optional[Say], where: str, new: str = "progress") -> Progress:
    """`given` (the value of the keyword `new`), or the value of the keyword `old` it replaced, with a
    DeprecationWarning naming the caller's function `where`."""
    if value is None:
        return given
    warnings.warn(f"{where}({old}=...) is deprecated: pass {new}=... (the same function)", DeprecationWarning,
                  stacklevel=3)
    return value


class ProgressLine:
    """Throttles and draws one line. `due()` says whether a new line may be drawn now (and starts the next
    wait); `draw()` draws it; `message()` prints a line of its own, clearing a redrawn one first.

    `enabled` is a `Progress`: True draws on stderr, a function is handed plain lines, False draws nothing.
    """

    def __init__(self, *, enabled: Progress = True, every: float = 5.0) -> None:
        self.enabled = bool(enabled)
        self.say = enabled if callable(enabled) else None
        self.tty = self.say is None and sys.stderr.isatty()
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
        if self.say is not None:
            self.say(text + plain_suffix)
            return
        if self.tty:
            sys.stderr.write("\r" + text.ljust(WIDTH) + ("\n" if final else ""))
        else:
            sys.stderr.write(text + plain_suffix + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.say is not None:
            self.say(text)
            return
        sys.stderr.write(("\r" + " " * WIDTH + "\r" if self.tty else "") + text + "\n")
        sys.stderr.flush()
