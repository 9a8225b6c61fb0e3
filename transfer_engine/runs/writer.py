"""`RunWriter`: write a run directory so that it appears complete or not at all.

Files go into a staging directory beside the target (`.NAME.partial-PID`); `commit()` renames it into
place once its files and its own entries are fsynced, then the parent is fsynced: a run that appeared
survives a crash whole. An error or a kill before that leaves the target untouched (an older run stays
as it was) and at most a staging directory, which the next writer to the same target removes.

    with RunWriter("runs/linear", overwrite=False) as w:   # checks --out before any training
        ...train...
        w.save_tensors(HEAD_WEIGHTS, head.state_dict())
        w.write_json(METRICS_JSON, metrics)
        w.write_json(RUN_JSON, info.to_dict())               # committed when the block ends without error
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any, Mapping

from transfer_engine._durable import fsync_dir, fsync_file, makedirs_durably, usual_mode
from transfer_engine.core.process import pid_alive
from transfer_engine.errors import UsageError
from transfer_engine.runs.format import RUN_JSON


class RunWriter:
    """Stage a run directory and move it into place when complete.

    Args:
        out: the run directory to create.
        overwrite: replace a run already at `out` (otherwise that is a UsageError).

    Raises:
        UsageError (at construction): `out` holds another run and overwrite is false, or `out` is a
            file or a non-empty directory that is not a run.
    """

    def __init__(self, out: str | os.PathLike, overwrite: bool = False) -> None:
        self.out = Path(out).expanduser().absolute()
        self.overwrite = overwrite
        check_out(self.out, overwrite)
        makedirs_durably(self.out.parent)  # a new parent must survive a crash with the run renamed into it
        for stale in self.out.parent.glob(f".{self.out.name}.partial-*"):
            if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
                shutil.rmtree(stale, ignore_errors=True)
        self.path = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir()
        self.committed = False
        self.aborted = False

    # -- writing files ------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Where to write file `name` (inside the staging directory)."""
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Write `obj` as indented JSON (NaN/inf are refused: they are not JSON)."""
        target = self.path / name
        target.write_text(json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")
        return target

    def save_tensors(self, name: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> Path:
        """Write tensors as safetensors (detached, on the CPU, contiguous, no shared storage)."""
        from safetensors.torch import save_file

        plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        target = self.path / name
        save_file(plain, str(target), metadata=dict(metadata or {}))
        # safetensors writes a temporary file of its own (mode 0600) and renames it onto `target`: give the
        # weights the mode of the run's other files (0666 less the umask), or a run shared through a group
        # or a web server is readable except for its weights.
        os.chmod(target, usual_mode())
        return target

    # -- finishing --------------------------------------------------------------------------------------
    def commit(self) -> Path:
        """Move the staged run into place (replacing an older run when overwrite is set); returns `out`."""
        if not (self.path / RUN_JSON).is_file():
            raise RuntimeError(f"a run needs {RUN_JSON} before it is committed")
        for f in self.path.iterdir():
            fsync_file(f)
        fsync_dir(self.path)  # the staged files' names, before the rename makes the folder the run
        check_out(self.out, self.overwrite)  # another process may have written a run meanwhile
        old = None
        if self.out.is_dir() and not (self.out / RUN_JSON).is_file():
            self.out.rmdir()  # an empty directory (check_out refused a non-empty one): the run takes its place
        elif self.out.is_dir():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.path, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_dir(self.out.parent)
        self.committed = True
        return self.out

    def abort(self) -> None:
        """Remove the staging directory (the target is left as it was); the writer is then done."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.aborted = True

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Commit when the block ends without error, abort on any error (a KeyboardInterrupt too); a writer
        already committed or aborted inside the block is left as it is."""
        if self.committed or self.aborted:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def check_out(out: Path, overwrite: bool) -> None:
    """The checks on a run's --out that must pass before any work is done (see `RunWriter`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file; expected a new directory for the run")
    if (out / RUN_JSON).is_file():
        if not overwrite:
            raise UsageError(f"--out {out} already holds a run; pass --overwrite to replace it, or choose another --out")
        return
    if any(out.iterdir()):
        raise UsageError(f"--out {out} is a non-empty directory that is not a te run; choose a new or empty directory")


def _pid_alive(text: str) -> bool:
    try:
        pid = int(text)
    except ValueError:
        return False
    return pid != os.getpid() and pid_alive(pid)
