"""Which parts (tar shards, Parquet/Arrow files) te extract has finished, so a re-run skips them unread.

A part is finished once every image of it has a committed row in the feature space (or failed for a
reason that is recorded). te extract then writes the part's entry: its URL, size and version (etag or
modification time) and its records (origin, content key, label text, split), plus its failures. A re-run,
or the same command after kill -9, finds the entry, checks the part's size and version against a listing
(one metadata request, no read) and that the space still holds every key, and takes the records instead
of reading the part. A changed part (another size or version) is read again; a part whose entry is
missing, because the run died while reading it, is read again from its start. That is the whole resume:
at most the unfinished parts are read twice (docs/scale.md: why a job must not restart from zero).

Entries live in the cache, `CACHE/parts/<space>/<sha256 of the URL>.json.gz`, written to a temporary
file, fsynced and renamed: an entry is whole or absent. They are per feature space, because a part is
finished for one backbone at a time.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from transfer_engine._durable import replace_durably, temporary_file
from transfer_engine.data.remote import PartRef

FOLDER = "parts"
VERSION = 1


@dataclass
class FinishedPart:
    """A part's entry: its records (origin, key, label text, split) and failures ({"path", "reason"})."""

    part: PartRef
    records: list[tuple[str, str, str, str]] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)


class PartLedger:
    """The finished parts of one feature space in one cache.

    Args:
        cache_root: the cache directory.
        space: the feature space's id.
    """

    def __init__(self, cache_root: Path, space: str) -> None:
        self.folder = Path(cache_root) / FOLDER / space

    def _path(self, part: PartRef) -> Path:
        return self.folder / (hashlib.sha256(part.url.encode("utf-8", "surrogatepass")).hexdigest() + ".json.gz")

    def lookup(self, part: PartRef) -> FinishedPart | None:
        """The part's entry when it is finished and unchanged since (same URL, size and version), else None
        (an entry that cannot be read counts as absent: the part is then read again)."""
        path = self._path(part)
        try:
            with gzip.open(path, "rt", encoding="utf-8", errors="surrogatepass") as fh:
                data = json.load(fh)
        except (OSError, ValueError, EOFError):
            return None
        if data.get("version") != VERSION or data.get("part") != part.fields():
            return None
        return FinishedPart(part, [tuple(r) for r in data["records"]], list(data["failures"]))

    def finish(self, done: FinishedPart) -> None:
        """Write the part's entry durably (a crash leaves it whole or absent)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self._path(done.part)
        tmp = temporary_file(target)
        payload = {"version": VERSION, "part": done.part.fields(), "records": done.records, "failures": done.failures}
        with gzip.open(tmp, "wt", encoding="utf-8", errors="surrogatepass", compresslevel=3) as fh:
            json.dump(payload, fh, separators=(",", ":"))
        replace_durably(tmp, target)
