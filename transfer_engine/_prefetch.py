"""`prefetched()`: run an iterator in a background thread, a bounded number of items ahead.

Used wherever te overlaps preparation with use: decoding images while the model runs (extraction) and
gathering cached rows while a head trains (the cache loader). The work it overlaps (PIL decoding, the
C++ gather) releases the GIL, so one thread is enough.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(source: Iterable[T], depth: int = 2, name: str = "te-prefetch") -> Iterator[T]:
    """Yield the items of `source`, produced in a thread at most `depth` items ahead.

    An exception raised by `source` is raised here, in the consumer. Stopping early (break, close,
    an exception in the consumer) stops the producer and closes `source` in its own thread, so a
    generator's `finally`/`with` blocks run (a thread pool inside it is shut down).

    Ctrl-C (KeyboardInterrupt, or SystemExit) while waiting for an item stops at once: the producer is
    told to stop but not waited for, since it may be blocked in a read that never returns (a file on a
    stale network mount); it is a daemon thread, so it cannot keep the process alive.
    """
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(source)
        try:
            for item in it:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failure(exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    interrupted = False
    try:
        while True:
            try:
                item = ready.get()
            except (KeyboardInterrupt, SystemExit):
                interrupted = True
                raise
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        if not interrupted:
            _wait_for(thread, ready)


def _wait_for(thread: threading.Thread, ready: queue.Queue) -> None:
    """Wait until the producer has stopped, taking items off the queue so that it is never stuck on a put."""
    while thread.is_alive():
        try:
            ready.get(timeout=0.05)
        except queue.Empty:
            pass
    thread.join()
