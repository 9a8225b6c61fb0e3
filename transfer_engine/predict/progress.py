"""te predict's progress line: done/total, failed, images/s and ETA (drawn by
`core.progress.ProgressLine`: redrawn on a terminal, a line every few seconds otherwise or to a function)."""

from __future__ import annotations

from transfer_engine.core.progress import ProgressLine, Say


class Progress:
    """Counts images handled and draws the line.

    Args:
        total: images to handle.
        enabled: draw anything at all: True on stderr, a function is handed each line (`core.progress`).
        label: the line's prefix.
        every: seconds between lines when stderr is not a terminal.
    """

    def __init__(self, total: int, *, enabled: bool | Say = True, label: str = "", every: float = 5.0) -> None:
        self.total, self.label = total, label
        self.done = self.failed = 0
        self.out = ProgressLine(enabled=enabled, every=every)

    def update(self, handled: int, failed: int = 0) -> None:
        """`handled` more images (of which `failed` were skipped)."""
        self.done += handled
        self.failed += failed
        if self.done < self.total and self.out.due():
            self._draw(final=False)

    def close(self) -> None:
        if self.out.enabled:
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        rate = self.done / self.out.elapsed()
        left = self.total - self.done
        eta = f" ETA {left / rate:.0f}s" if rate > 0 and left > 0 else ""
        self.out.draw(f"{self.label}: {self.done}/{self.total} images, {self.failed} failed, {rate:.1f} img/s{eta}",
                      final=final)
