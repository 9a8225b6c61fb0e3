"""Fine-tuning under torchrun (2 processes, gloo on the CPU) matches one process, and a backbone
unfrozen after the DDP wrap really trains, in step on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from conftest import ONE_THREAD, TINY
from safetensors.torch import load_file

from transfer_engine.backbones import create_backbone
from transfer_engine.finetune import finetune
from transfer_engine.finetune.strategies import backbone_blocks

# --freeze-bn: BatchNorm batch statistics over 8 images per rank are not those over 16 in one process;
# with frozen statistics the two runs compute the same gradients up to float rounding.
KWARGS = dict(backbone="mobilenet_v3_small", weights="none", data="builtin:digits", input_size=32, head="linear",
              limit=160, batch_size=16, epochs=2, strategy="freeze_unfreeze", unfreeze_epoch=1, freeze_bn=True,
              augment="crop", keep="last", workers=0, progress=False)  # the same run in this process
ARGS = [*TINY, "--head", "linear", "--limit", "160", "--batch-size", "16", "--epochs", "2",
        "--strategy", "freeze_unfreeze", "--unfreeze-epoch", "1", "--freeze-bn", "--augment", "crop",
        "--keep", "last", "--workers", "0", "--json"]


def test_two_processes_match_one_and_train_the_unfrozen_backbone_in_step(tmp_path, one_thread):
    env = {**os.environ, **ONE_THREAD}
    env.pop("TE_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
         "transfer_engine", "finetune", *ARGS, "--out", str(tmp_path / "two")],
        env=env, capture_output=True, text=True, timeout=600)
    # exit 0 includes te's own check that both ranks ended with bit-identical weights
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout)
    one = finetune(tmp_path / "one", **KWARGS).to_dict()
    assert (two["world_size"], one["world_size"]) == (2, 1)
    for key in ("train_accuracy", "val_accuracy", "test_accuracy"):
        assert abs(two[key] - one[key]) <= 0.02, (key, two[key], one[key])
    got, want = load_file(tmp_path / "two" / "model.safetensors"), load_file(tmp_path / "one" / "model.safetensors")
    for key in want:
        assert torch.allclose(got[key].float(), want[key].float(), atol=1e-3, rtol=1e-3), key

    start = create_backbone("mobilenet_v3_small", weights="none", seed=0).model
    initial = start.state_dict()
    moved = [any(not torch.equal(got[f"backbone.{n}"], initial[n]) for n, _ in b.params)
             for b in backbone_blocks(start)]
    assert all(moved), "blocks unfrozen after the DDP wrap did not train"
    assert two["history"][0]["trainable_backbone_blocks"] == 0 and two["history"][1]["trainable_backbone_blocks"] > 0
