"""Where the runs of a multi-run recipe live until one becomes the result: OUT.search/, beside OUT.

    OUT.search/plan.json     the recipe's config (--resume continues only the same search)
    OUT.search/trials.json   the trials finished so far (an interrupted search reuses them)
    OUT.search/NAME/         each trial: an ordinary fixed-recipe run directory (`fixed.run_fixed`)

`Workspace.finish` moves the chosen trial's files to OUT, with the search recorded in its metrics.json,
and removes OUT.search/.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from transfer_engine._durable import write_durably
from transfer_engine.core import distributed as dist
from transfer_engine.core.configs import FinetuneConfig
from transfer_engine.core.format import percent
from transfer_engine.core.progress import Progress, say_of
from transfer_engine.errors import UsageError
from transfer_engine.finetune import fixed
from transfer_engine.finetune.records import FinetuneSummary, Trial
from transfer_engine.runs import METRICS_JSON, RUN_JSON

TRIALS_JSON = "trials.json"
PLAN_JSON = "plan.json"


def search_dir(out: Path) -> Path:
    """Where the trials of the search for run `out` live: `out` + ".search", beside it."""
    return out.parent / f"{out.name}.search"


@dataclass
class Workspace:
    """OUT.search/ of one recipe (`open` it), its finished trials and how its runs are made.

    Attributes:
        out: the run directory the chosen trial becomes.
        work: OUT.search/.
        done: {name: Trial.to_dict()} of the trials finished, this session's and an interrupted one's.
        summaries: {name: FinetuneSummary} of the trials run in this session.
    """

    out: Path
    work: Path
    done: dict[str, dict[str, Any]]
    resume: bool
    overwrite: bool
    progress: Progress
    rank: int
    summaries: dict[str, FinetuneSummary] = field(default_factory=dict)

    @classmethod
    def open(cls, out: Path, cfg: FinetuneConfig, *, resume: bool, overwrite: bool, progress: Progress) -> "Workspace":
        """Create OUT.search/ for the recipe `cfg` (or take it up again under --resume).

        Raises:
            UsageError: OUT.search/ holds an interrupted search (without --resume or --overwrite), or
                another search (with --resume).
        """
        rank, _ = dist.rank_and_world()
        work = search_dir(out)
        plan = {"config": _jsonable(asdict(cfg))}
        done = _prepare(work, plan, resume, overwrite) if rank == 0 else {}
        done = dist.from_rank0(done, "taking the trials rank 0 found done")
        dist.barrier()
        return cls(out, work, done, resume, overwrite, progress, rank)

    def say(self, text: str) -> None:
        """A progress line (rank 0), where `progress` sends them."""
        if self.rank == 0:
            say_of(self.progress)(text)

    def run(self, name: str, trial_cfg: FinetuneConfig) -> Trial:
        """Train the trial `name` (a fixed-recipe run in OUT.search/NAME), or reuse it when an interrupted search
        finished it already; records it in trials.json."""
        if name in self.done:
            return Trial.from_dict({**self.done[name], "status": "reused"})
        began = time.perf_counter()
        s = fixed.run_fixed(self.work / name, trial_cfg, resume=self.resume, progress=self.progress)
        trial = Trial(name, trial_cfg.lr, trial_cfg.epochs, "stopped early" if s.stopped_early else "done",
                      s.best_epoch, len(s.history), s.val_accuracy, s.test_accuracy,
                      round(time.perf_counter() - began, 3), s.seconds, s.val_loss)
        self.summaries[name] = s
        if self.rank == 0:
            self.done[name] = trial.to_dict()
            write_json(self.work / TRIALS_JSON, self.done)
        return trial

    def discard_unless_finished(self) -> None:
        """After an error: remove OUT.search/ when no trial had finished (a bad --from, a usage error of the first
        trial leave nothing behind); finished trials stay for --resume (so does an interrupted search)."""
        if self.rank == 0 and not self.done and self.work.exists():
            shutil.rmtree(self.work, ignore_errors=True)

    def finish(self, chosen: Trial, trials: list[Trial], recipe: str, budget_minutes: float) -> FinetuneSummary:
        """Write the chosen trial's run as OUT (with the search in its metrics.json), remove OUT.search/.

        Returns:
            The chosen trial's summary, with `out` and `search` (the trials, the choice, the verdict).
        """
        source = self.work / chosen.name
        files = ({name: json.loads((source / name).read_text()) for name in (METRICS_JSON, RUN_JSON)}
                 if self.rank == 0 else {})
        files = dist.from_rank0(files, "taking the chosen trial's files from rank 0")
        metrics = files[METRICS_JSON]
        paid, verdict = _verdict(metrics, chosen)
        total = round(sum(t.seconds for t in trials), 3)
        record = {"recipe": recipe, "budget_minutes": budget_minutes, "seconds": total, "chosen": chosen.name,
                  "paid": paid, "start_val_accuracy": (metrics.get("before") or {}).get("val_accuracy"),
                  "verdict": verdict, "trials": [t.to_dict() for t in trials]}
        self.say(f"finetune: search: {verdict} ({len([t for t in trials if t.ran])} trials, {total:.0f} s)")
        if self.rank == 0:
            self._move_into_out(source, {**metrics, "search": record})
        dist.barrier()
        summary = self.summaries.get(chosen.name) or _summary_from_run(files, chosen)
        return replace(summary, out=str(self.out), search=record)

    def _move_into_out(self, source: Path, metrics: dict) -> None:
        from transfer_engine.runs import RunWriter

        with RunWriter(self.out, overwrite=self.overwrite) as writer:  # committed at the end, aborted on an error
            for item in source.iterdir():
                shutil.move(str(item), str(writer.file(item.name)))
            writer.write_json(METRICS_JSON, metrics)
        shutil.rmtree(self.work, ignore_errors=True)


def write_json(path: Path, obj) -> None:
    """Write `obj` as JSON to `path` durably (a kill leaves the old file or the new one)."""
    text = json.dumps(obj, indent=2)
    write_durably(path, lambda tmp: tmp.write_text(text))


def _verdict(metrics: dict, chosen: Trial) -> tuple[bool | None, str]:
    """Whether fine-tuning paid (None: val cannot say) and the sentence that says so, from the chosen trial's
    metrics.json."""
    start_val = (metrics.get("before") or {}).get("val_accuracy")
    held_out = (metrics.get("parent") or {}).get("val_accuracy")
    start_saw_val = not metrics.get("start_candidate", True)
    if start_saw_val and not chosen.best_epoch:
        return False, (f"fine-tuning did not reach the start's val accuracy ({percent(start_val)}, optimistic: the "
                       "--from head was refitted on train+val), so the run holds the starting model")
    if start_saw_val:
        return None, (f"val cannot say whether fine-tuning paid: the --from head was refitted on train+val (te train "
                      f"--sweep); its held-out val accuracy was {percent(held_out)}, the chosen trial {chosen.name} "
                      f"reached {percent(chosen.val_accuracy)} on a val its head has seen; compare the test accuracies")
    if chosen.best_epoch:
        return True, (f"fine-tuning paid: {chosen.name} reached val accuracy {percent(chosen.val_accuracy)} against "
                      f"{percent(start_val)} at the start")
    return False, (f"fine-tuning did not pay on this data: no trial beat the start on val ({percent(start_val)}); "
                   "the run holds the starting model")


def _prepare(work: Path, plan: dict, resume: bool, overwrite: bool) -> dict:
    """Create OUT.search/ (or take it up again under --resume); returns the trials already finished."""
    if work.exists():
        try:
            old = json.loads((work / PLAN_JSON).read_text())
        except (OSError, ValueError):
            old = None
        if overwrite and not resume:
            shutil.rmtree(work)
        elif not resume:
            raise UsageError(f"{work} holds an interrupted recipe search; pass --resume to continue it or --overwrite "
                             "to start over")
        elif old != plan:
            raise UsageError(f"{work} holds a recipe search with other settings; --resume continues a search only "
                             "with the same options (or pass --overwrite without --resume to start over)")
        else:
            try:
                return json.loads((work / TRIALS_JSON).read_text())
            except (OSError, ValueError):
                return {}
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / PLAN_JSON, plan)
    return {}


def _jsonable(value):
    """The config as JSON would read it back (tuples as lists), so a stored plan compares equal."""
    return json.loads(json.dumps(value, default=str))


def _summary_from_run(files: dict, trial: Trial) -> FinetuneSummary:
    """The FinetuneSummary of a trial reused from an interrupted search, from its metrics.json and run.json."""
    m, info = files[METRICS_JSON], files[RUN_JSON]
    hp = info["hyperparameters"]
    return FinetuneSummary(
        out="", train_accuracy=m["train_accuracy"], val_accuracy=m["val_accuracy"], test_accuracy=m["test_accuracy"],
        before={k: v for k, v in (m.get("before") or {}).items() if k.endswith("accuracy")}, parent=m.get("parent"),
        best_epoch=m["best_epoch"], epochs=trial.epochs, strategy=hp["strategy"], backbone=info["backbone"]["name"],
        head=info["head"]["name"], input_size=hp["input_size"], precision=hp["precision"], device=hp["device_type"],
        world_size=hp["world_size"], resumed=True, seconds=m["seconds"], images_per_second=m["images_per_second"],
        history=m["epochs"], stopped_early=m.get("stopped_early", False), start_candidate=m.get("start_candidate", True))
