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
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()
