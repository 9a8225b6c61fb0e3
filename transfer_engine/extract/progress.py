"""te extract's progress line: done/total, reused, failed, images/s and ETA (drawn by
`core.progress.ProgressLine`: redrawn on a terminal, a line every few seconds otherwise or to a function)."""

from __future__ import annotations

from transfer_engine.core.progress import ProgressLine, Say


class Progress:
    def __init__(self, total: int | None, *, enabled: bool | Say = True, label: str = "", every: float = 5.0) -> None:
        self.total = total
        self.label = label
        self.done = self.reused = self.failed = 0
        self.out = ProgressLine(enabled=enabled, every=every)

    def update(self, done: int = 0, reused: int = 0, failed: int = 0) -> None:
        self.done += done
        self.reused += reused
        self.failed += failed
        # close() draws the last line; without a total (parts are not counted first) every line is a running count
        unfinished = self.total is None or self.done + self.reused + self.failed < self.total
        if unfinished and self.out.due():
            self._draw(final=False)

    def _draw(self, final: bool) -> None:
        handled = self.done + self.reused + self.failed
        rate = self.done / self.out.elapsed()
        left = self.total - handled if self.total is not None else 0
        eta = f"ETA {left / rate:.0f}s" if rate > 0 and left > 0 else ""
        total = f"/{self.total}" if self.total is not None else ""
        self.out.draw(f"{self.label}: {handled}{total} (new {self.done}, reused {self.reused}, "
                      f"failed {self.failed}) {rate:.1f} img/s {eta}".rstrip(), final=final)

    def close(self) -> None:
        if self.out.enabled:
            self._draw(final=True)
