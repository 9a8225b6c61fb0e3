"""The remedy that never touches the user's files: a CSV manifest (path,label,split) of the data set without
the leaked val/test images (or with them moved to train) and, when asked, without the likely label errors.

Paths are written relative to the manifest's folder when the images are inside it, else absolute (te
extract reads both, and says when paths leave the manifest's folder). Every image keeps its bytes, so te
extract --data MANIFEST reuses every row from the cache and extracts nothing.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transfer_engine._durable import write_text_durably
from transfer_engine.data.recorded import recorded_file
from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    from transfer_engine.doctor.run import Diagnosis


def write_manifest(d: "Diagnosis", path: Path) -> dict[str, Any]:
    """Write the manifest; returns {"path", "rows", "dropped", "moved", "label_errors_dropped", "leaked"}.

    Raises:
        UsageError: the data set's images are not files te can name (a built-in set), or the cache does not
            record where they are.
    """
    rows, config = d.rows, d.config
    if rows.data is None:
        raise UsageError(f"--write-manifest: the cache does not record where the images of {rows.dataset!r} are "
                         "(extracted by an older te); re-run te extract on the data, then te doctor")
    if recorded_file(rows.data, "x") is None:
        raise UsageError(f"--write-manifest: {rows.data} holds no image files to list; a manifest names files")
    path = Path(path).expanduser().absolute()
    leaked = d.leaked
    drop_labels = set(d.label_error_records()) if config.drop_label_errors else set()
    if config.drop_label_errors:  # the same bytes under two labels: neither label can be trusted
        drop_labels |= {r for g in d.exact if g.conflicting for r in g.records}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    written = dropped = moved = 0
    for r, (name, label, split) in enumerate(zip(rows.paths, rows.labels.tolist(), rows.splits.tolist())):
        if r in drop_labels:
            dropped += 1
            continue
        if r in leaked:
            if config.leaked == "drop":
                dropped += 1
                continue
            split, moved = "train", moved + 1
        writer.writerow([_relative(recorded_file(rows.data, name), path.parent), rows.class_names[label], split])
        written += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_durably(path, out.getvalue())
    return {"path": str(path), "rows": written, "dropped": dropped, "moved": moved, "leaked": len(leaked),
            "label_errors_dropped": len(drop_labels), "remedy": config.leaked}


def _relative(file: Path, folder: Path) -> str:
    file = Path(os.path.abspath(file))
    try:
        return file.relative_to(folder).as_posix()
    except ValueError:
        return str(file)
