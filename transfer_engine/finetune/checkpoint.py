"""Checkpoints that let `te finetune --resume` continue a killed run to the very same weights.

Where: `OUT.ckpt/` beside the run directory `OUT` (the run itself is staged per process and appears only
when complete, so it cannot hold them). It holds

    last.pt             model, optimizer, scheduler, grad scaler, every rank's RNG states, the position in
                        the epoch (epoch, step) and the history; written after every epoch (and every
                        --checkpoint-every steps)
    best.safetensors    the weights with the best validation accuracy so far

Each file is written to a temporary name, fsynced, renamed over the old one and the directory fsynced: a
kill at any instant leaves the previous checkpoint or the new one, never a torn file. The directory is
removed once the run directory is committed.

The data order and augmentations are functions of (seed, epoch, index) (see data.py), so restoring this
state is all a resumed run needs to take bit for bit the same steps as an uninterrupted one.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from transfer_engine._durable import write_durably
from transfer_engine.errors import UsageError, first_line
from transfer_engine.finetune.records import Candidate, EpochRecord

FORMAT = "te-finetune-checkpoint"
VERSION = 1
LAST = "last.pt"
BEST = "best.safetensors"


def checkpoint_dir(out: Path) -> Path:
    """Where the checkpoints of the run `out` live: `out` + ".ckpt", beside it."""
    return out.parent / f"{out.name}.ckpt"


@dataclass
class TrainState:
    """Where training stands (saved in every checkpoint, as `to_dict()`).

    Attributes:
        epoch: the epoch in progress, 0-based (== epochs once training is done).
        step: the next optimizer step within that epoch.
        sums: running loss/correct/count of that epoch's training batches.
        history: one record per finished epoch (what metrics.json["epochs"] holds).
        best: the best weights so far (epoch 0: the start); None before the start is evaluated.
        before: accuracies and losses of the starting model, and whether it is a candidate ("start_candidate").
        seconds: training time so far (excluding evaluation), over all sessions.
        images: training images processed so far.
    """

    epoch: int = 0
    step: int = 0
    sums: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "count": 0})
    history: list[EpochRecord] = field(default_factory=list)
    best: Candidate | None = None
    before: dict = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "best": self.best.to_dict() if self.best is not None else {}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        return cls(**{**data, "history": [EpochRecord.from_dict(r) for r in data["history"]],
                      "best": Candidate.from_dict(data["best"]) if data["best"] else None})


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA devices, Python's `random`)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def save(directory: Path, *, config: dict, state: TrainState, model: torch.nn.Module,
         optimizer: torch.optim.Optimizer, scheduler: Any, scaler: Any, rng: list[dict],
         best_weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write last.pt (and best.safetensors when given) atomically.

    Args:
        directory: the checkpoint directory (created when missing).
        config: what determines the run's trajectory; --resume refuses another one.
        state: where training stands.
        model, optimizer, scheduler, scaler: their state dicts are saved.
        rng: every rank's `rng_state()`, in rank order.
        best_weights: the best weights so far, when they changed since the last save.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if best_weights is not None:
        from safetensors.torch import save_file

        plain = {k: v.detach().to("cpu").contiguous() for k, v in best_weights.items()}
        write_durably(directory / BEST, lambda p: save_file(plain, str(p)))
    payload = {"format": FORMAT, "version": VERSION, "config": config, "state": state.to_dict(),
               "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng}
    write_durably(directory / LAST, lambda p: torch.save(payload, p))


def exists(directory: Path) -> bool:
    return (directory / LAST).is_file()


def load(directory: Path, config: dict) -> dict[str, Any]:
    """Read last.pt and check it belongs to a run configured as `config`.

    Returns:
        The payload: "state" (a TrainState), "model", "optimizer", "scheduler", "scaler", "rng" and
        "best" (the best weights), "note" (a line to show when best.safetensors was damaged and replaced).

    Raises:
        UsageError: the checkpoint cannot be read (last.pt, or a best.safetensors that cannot be replaced),
            or was made with other settings.
    """
    path = directory / LAST
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged pickles
        raise UsageError(f"{path} cannot be read ({type(exc).__name__}); delete {directory} to start over") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("version", 0) > VERSION:
        raise UsageError(f"{path} is not a te finetune checkpoint this te can read; delete {directory} to start over")
    saved = payload["config"]
    changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
    if changed:
        what = ", ".join(f"{k}: {saved.get(k)!r} -> {config.get(k)!r}" for k in changed[:4])
        raise UsageError(f"--resume: the checkpoint in {directory} was made with other settings ({what}); "
                         "resume with the same command, or pass --overwrite to start over")
    payload["state"] = TrainState.from_dict(payload["state"])
    payload["best"], payload["note"] = _best_weights(directory, payload)
    return payload


def _best_weights(directory: Path, payload: dict[str, Any]) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """best.safetensors of a checkpoint (None when there is none yet), and a note when it had to be replaced.

    A damaged file (truncated, overwritten, of another model) is replaced by last.pt's weights when those
    are the best ones (last.pt was written at the end of the best epoch, or at the start); otherwise the
    best weights are lost and resuming cannot give the run's result.

    Raises:
        UsageError: best.safetensors is damaged and last.pt does not hold the same weights.
    """
    from safetensors.torch import load_file

    path = directory / BEST
    if not path.is_file():
        return None, None
    try:
        best = load_file(str(path))
        _check_same_tensors(best, payload["model"])
        return best, None
    except Exception as exc:  # safetensors raises its own error types for damaged files
        reason = f"{type(exc).__name__}: {first_line(exc, 200)}"
    state: TrainState = payload["state"]
    best_epoch = state.best.epoch if state.best is not None else None
    if state.step == 0 and best_epoch == state.epoch:
        note = (f"{path} is damaged ({reason}); its weights are those of {LAST} (epoch {state.epoch}), "
                "which are used instead")
        return {k: v.clone() for k, v in payload["model"].items()}, note
    raise UsageError(f"--resume: {path} is damaged ({reason}) and the best weights of epoch "
                     f"{best_epoch} are nowhere else; delete {directory} (or run without --resume and "
                     "with --overwrite) to start over")


def _check_same_tensors(weights: dict[str, torch.Tensor], model: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless `weights` has the keys, shapes and dtypes of the state dict `model`."""
    if weights.keys() != model.keys():
        missing = sorted(set(model) - set(weights)) or sorted(set(weights) - set(model))
        raise ValueError(f"its tensors are not the model's (first difference: {missing[0]!r})")
    for key, tensor in model.items():
        if weights[key].shape != tensor.shape or weights[key].dtype != tensor.dtype:
            raise ValueError(f"tensor {key!r} is {tuple(weights[key].shape)} {weights[key].dtype}, the model's is "
                             f"{tuple(tensor.shape)} {tensor.dtype}")


def remove(directory: Path) -> None:
    """Delete the checkpoint directory (after the run is committed)."""
    shutil.rmtree(directory, ignore_errors=True)
