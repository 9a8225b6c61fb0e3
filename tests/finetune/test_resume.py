"""`te finetune --resume` after kill -9 ends with the very weights of an uninterrupted run, and a
checkpoint is never silently ignored or applied to other settings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ONE_THREAD, TINY
from safetensors.torch import load_file

from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune
from transfer_engine.finetune.checkpoint import LAST, checkpoint_dir

# The mlp head has dropout (the RNG state must be restored), freeze_unfreeze changes phase mid-run, and a
# checkpoint every 2 steps lets the kill land mid-epoch (the sampler position must be restored), and
# --train-bn makes the BatchNorm statistics part of what must continue exactly.
ARGS = [*TINY, "--head", "mlp", "--limit", "200", "--batch-size", "16", "--epochs", "2",
        "--strategy", "freeze_unfreeze", "--checkpoint-every", "2", "--workers", "0", "--train-bn"]
KWARGS = dict(backbone="mobilenet_v3_small", weights="none", data="builtin:digits", input_size=32, head="mlp",
              limit=200, batch_size=16, epochs=2, strategy="freeze_unfreeze", checkpoint_every=2, workers=0,
              freeze_bn=False, progress=False)  # the same run through the Python API


def _steps_done(ckpt) -> int:
    try:
        state = torch.load(ckpt / LAST, weights_only=True)["state"]
    except Exception:  # not there yet
        return -1
    return state["epoch"] * 1000 + state["step"]


def test_kill_9_mid_epoch_then_resume_gives_the_uninterrupted_weights(te, tmp_path, one_thread):
    env = {**os.environ, **ONE_THREAD}
    env.pop("TE_DEBUG", None)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "transfer_engine", "finetune", *ARGS, "--out", str(killed)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, reached = time.time() + 120, False
    while time.time() < deadline and proc.poll() is None:
        if _steps_done(checkpoint_dir(killed)) >= 1000 + 2:  # mid-way through the second epoch
            reached = True
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached, "the run finished before it could be killed; make the data set larger"
    assert not killed.exists()  # nothing that looks like a finished run

    with pytest.raises(UsageError, match="pass --resume to continue it"):
        finetune(killed, **KWARGS)
    with pytest.raises(UsageError, match="other settings.*lr"):
        finetune(killed, **KWARGS, resume=True, lr=0.01)

    resumed = te("finetune", *ARGS, "--out", str(killed), "--resume", "--json", env=ONE_THREAD)
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["resumed"] is True and "resuming from" in resumed.stderr
    assert not checkpoint_dir(killed).exists()  # cleaned up once the run is in place

    straight = finetune(tmp_path / "straight", **KWARGS)  # uninterrupted, one thread as well
    got, want = load_file(killed / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    a, b = json.loads(resumed.stdout), straight.to_dict()
    assert [h["val_loss"] for h in a["history"]] == [h["val_loss"] for h in b["history"]]
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
