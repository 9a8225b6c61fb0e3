"""te extract over parts (webdataset tar shards, Parquet/Arrow files; `data.parts`).

What differs from a folder:
- Work is split by part: under torchrun rank r takes parts r, r + world, ... whole, so no two ranks open
  one part, and a rank reads only its own parts (multi-node runs need no shared file system when the
  data is at a URL).
- Each part is read once, front to back: an image's bytes are held from the hash to the decode instead
  of being read a second time (a folder re-reads the file; a shard would be read twice). What is held is
  bounded: a chunk of keys is asked of the cache once it has CHUNK images or CHUNK_BYTES bytes, and the
  extractor's queue holds a few batches.
- A finished part is written to the ledger (`extract.ledger`); a re-run takes a finished, unchanged part's
  records from there without reading it.
- Labels arrive as text; the class names are fixed once every part is through (`data.parts`).
Records are indexed `part_ordinal << 32 | sample_ordinal`: data-set order is part order, then order in
the part, whatever rank read the part.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from transfer_engine.core.digest import content_key
from transfer_engine.data.remote import PartRef
from transfer_engine.data.sources import derived_split
from transfer_engine.extract.ledger import FinishedPart, PartLedger
from transfer_engine.extract.pipeline import Item

CHUNK = 512  # keys asked of the cache at once (as for folders)
CHUNK_BYTES = 64 << 20  # ... or fewer, once their images hold this many bytes (camera photos in a shard)
PART_SHIFT = 32  # a part holds fewer than 2**32 samples


@dataclass
class _Open:
    """A part this rank has started reading: its records so far, and the keys not yet committed."""

    part: PartRef
    records: list[tuple[str, str, str, str]] | None = field(default_factory=list)  # None: spilled
    failures: list[dict] = field(default_factory=list)
    pending: set[str] = field(default_factory=set)
    failed_keys: dict[str, str] = field(default_factory=dict)  # key -> reason: decoded by no one
    read_done: bool = False
    spilled: tuple[int, int] | None = None  # (offset, length) of its records in the spill file


class _Spill:
    """Records of parts read to the end but still waiting for keys, kept on disk: a part waits while a copy
    of its images is computed for an earlier part, and the reading runs ahead meanwhile (nothing to queue),
    so in memory the waiting parts' records would grow with the data set. One anonymous file in the
    cache's folder (gone with the process, even after kill -9), written and read at explicit offsets."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(dir=folder, prefix=".te-parts-")
        self._end = 0
        self._lock = threading.Lock()

    def put(self, records: list) -> tuple[int, int]:
        data = json.dumps(records, separators=(",", ":")).encode("utf-8", "surrogatepass")
        with self._lock:
            where = (self._end, len(data))
            self._end += len(data)
        os.pwrite(self._file.fileno(), data, where[0])
        return where

    def get(self, where: tuple[int, int]) -> list[tuple]:
        data = os.pread(self._file.fileno(), where[1], where[0])
        return [tuple(r) for r in json.loads(data.decode("utf-8", "surrogatepass"))]

    def close(self) -> None:
        self._file.close()


class PartProgress:
    """The parts being read, each written to the ledger once all its images are committed (or failed).

    `start`/`expect`/`read_all` run in the thread that reads the parts, `settle` in the one that stores the
    features: a lock guards the open parts.
    """

    def __init__(self, ledger: PartLedger, contains: Callable[[list[str]], list[bool]]) -> None:
        self.ledger = ledger
        self.contains = contains
        self.finished = 0
        self._open: list[_Open] = []
        self._lock = threading.Lock()
        self._spill: _Spill | None = None

    def start(self, part: PartRef) -> _Open:
        entry = _Open(part)
        with self._lock:
            self._open.append(entry)
        return entry

    def expect(self, entry: _Open, key: str) -> None:
        with self._lock:
            entry.pending.add(sys.intern(key))  # parts waiting on the same copies share one string each

    def read_all(self, entry: _Open) -> None:
        with self._lock:
            entry.read_done = True
            if entry.pending:  # waits on keys in flight: its records wait on disk
                if self._spill is None:
                    self._spill = _Spill(self.ledger.folder)
                entry.spilled, entry.records = self._spill.put(entry.records), None
        self._finish_ready()

    def settle(self, keys: list[str], failed_keys: list[str], failed: list[dict]) -> None:
        """A batch is committed: `keys` have rows, `failed_keys` did not decode (reasons in `failed`)."""
        with self._lock:
            for entry in self._open:
                if entry.pending:
                    entry.pending.difference_update(keys)
                    for key, failure in zip(failed_keys, failed):
                        if key in entry.pending:
                            entry.pending.discard(key)
                            entry.failed_keys[key] = failure["reason"]
        self._finish_ready()

    def close(self) -> None:
        """Once every batch is stored: a part still waiting on a key another part's batch committed (a copy
        whose commit raced its lookup) is checked against the space and finished."""
        with self._lock:
            for entry in self._open:
                if entry.read_done and entry.pending:
                    keys = sorted(entry.pending)
                    entry.pending.difference_update(k for k, have in zip(keys, self.contains(keys)) if have)
        self._finish_ready()
        if self._spill is not None:
            self._spill.close()

    def _finish_ready(self) -> None:
        with self._lock:
            ready = [e for e in self._open if e.read_done and not e.pending]
            self._open = [e for e in self._open if not (e.read_done and not e.pending)]
        for entry in ready:
            records = entry.records if entry.records is not None else self._spill.get(entry.spilled)
            kept = [r for r in records if r[1] not in entry.failed_keys]
            lost = [{"path": r[0], "reason": entry.failed_keys[r[1]]} for r in records if r[1] in entry.failed_keys]
            self.ledger.finish(FinishedPart(entry.part, kept, entry.failures + lost))
            self.finished += 1


@dataclass
class PartCounts:
    """What `te extract --json` reports about the parts ("parts": total, read, skipped_finished)."""

    total: int = 0
    read: int = 0
    skipped_finished: int = 0

    def fields(self) -> dict:
        return {"total": self.total, "read": self.read, "skipped_finished": self.skipped_finished}


def label_problem(label: str | None) -> str | None:
    """Why a label met as text cannot name a class (class names are one line of valid text), or None."""
    if label is None:
        return "no label"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in label) or "\ufffd" in label:
        return f"the label {label[:40]!r} is not one line of valid UTF-8 text"
    return None


def pending_from_parts(source, parts: Iterable[tuple[int, PartRef]], ledger: PartLedger, progress: PartProgress,
                       space, spool, run, meter, clock, counts: PartCounts, labels: set[str],
                       loader: Callable[[object, bytes], Callable], limit: int | None = None) -> Iterator[Item]:
    """This rank's parts, in order: a finished part's records from the ledger, the others read and hashed,
    yielding an `Item` (holding its bytes) for each key the space lacks (once per key). With `limit`, the
    first `limit` samples only (a part cut short is not finished)."""
    for ordinal, part in parts:
        if limit is not None and run.handled >= limit:
            return
        base = ordinal << PART_SHIFT
        done = ledger.lookup(part)
        if done is not None and all(space.contains([r[1] for r in done.records])):
            counts.skipped_finished += 1
            for j, (path, key, label, split) in enumerate(done.records):
                spool.write(base + j, path, key, label, split)
                labels.add(label)
            run.handled += len(done.records) + len(done.failures)
            run.reused += len(done.records)
            run.failed.extend(done.failures)
            meter.update(reused=len(done.records), failed=len(done.failures))
            continue
        counts.read += 1
        entry = progress.start(part)
        chunk: list[tuple] = []
        held = 0
        for j, record in enumerate(source.part_records(part)):
            if limit is not None and run.handled >= limit:
                yield from _queue(chunk, entry, progress, space, run, meter, loader)
                return
            run.handled += 1
            sample = record.sample
            reason = record.reason if record.data is None else label_problem(sample.label)
            if reason is not None:
                failure = {"path": sample.path, "reason": reason}
                run.failed.append(failure)
                entry.failures.append(failure)
                meter.update(failed=1)
                continue
            with clock.timing("hash"):
                key = content_key(record.data)
            split = sample.split or derived_split(key)
            spool.write(base + j, sample.path, key, sample.label, split)
            entry.records.append((sample.path, key, sample.label, split))
            labels.add(sample.label)
            chunk.append((sample, key, record.data))
            held += len(record.data)
            if len(chunk) >= CHUNK or held >= CHUNK_BYTES:
                yield from _queue(chunk, entry, progress, space, run, meter, loader)
                chunk, held = [], 0
        yield from _queue(chunk, entry, progress, space, run, meter, loader)
        progress.read_all(entry)


def _queue(chunk: list[tuple], entry: _Open, progress: PartProgress, space, run, meter,
           loader: Callable[[object, bytes], Callable]) -> Iterator[Item]:
    if not chunk:
        return
    for _, key, _ in chunk:  # before the lookup: a commit from now on settles the key for this part too
        progress.expect(entry, key)
    run.in_flight.prune()
    present = space.contains([key for _, key, _ in chunk])
    settled = []
    for (sample, key, data), have in zip(chunk, present):
        if have or key in run.in_flight.keys:
            run.reused += 1
            meter.update(reused=1)
            if have:
                settled.append(key)
            continue
        run.in_flight.keys.add(key)
        yield Item(key, sample.path, loader(sample, data), (lambda data=data: data))
    if settled:
        progress.settle(settled, [], [])
