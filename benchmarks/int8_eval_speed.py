"""How fast does a QAT run evaluate in onnxruntime's integer arithmetic? Images/s of `QuantSim`'s two modes.

    python benchmarks/int8_eval_speed.py RUN [--images 64] [--batches 4,8,16,32,64]

RUN is a `te train` or `te finetune` run (a CNN backbone, e.g. EfficientNet-Lite0 + linear head). The script
prepares the int8 simulation exactly as `te finetune RUN --qat` does (BatchNorms folded, onnxruntime's scales
calibrated on train images), then times forwards without gradients on the run's val images:

    exact    the evaluation te finetune --qat reports (integer sums, the kernels' requantization)
    float    the same model with float fake quantization (what training steps compute; the baseline)

at each batch size, in this process, one after the other, on the model as te finetune holds it (channels-last
where te finetune uses it). Run it on a quiet machine; figures: docs/export.md, "Training in float,
evaluating in integers".
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batches", default="4,8,16,32,64")
    args = parser.parse_args()

    import torch

    from transfer_engine.core.configs import FinetuneConfig
    from transfer_engine.finetune.job import build_job

    with tempfile.TemporaryDirectory(prefix="te-eval-speed-") as work:
        cfg = FinetuneConfig(from_run_dir=str(args.run), qat=True, epochs=1, augment="none").fixed()
        job = build_job(cfg, Path(work) / "ckpt")
    model, val = job.trainer.model.eval(), job.sets["val"]
    n = min(args.images, len(val))
    images = job.trainer._input(torch.stack([val[(i, None)][0] for i in range(n)]))
    print(f"{job.start.backbone.name} at {job.input_size} px, {n} val images, {torch.get_num_threads()} threads; "
          f"te finetune --qat evaluates in batches of {job.eval_batch}")
    rates: dict[tuple[str, int], float] = {}
    for mode in ("exact", "float"):
        job.qat.sim.exact = mode == "exact"
        for batch in (int(b) for b in args.batches.split(",")):
            with torch.no_grad():
                model(images[:batch])  # warm-up: first-call allocations and oneDNN's kernel choice
                started = time.perf_counter()
                for i in range(0, n, batch):
                    model(images[i:i + batch])
                rates[mode, batch] = n / (time.perf_counter() - started)
            print(f"{mode:5s} batch {batch:3d}: {rates[mode, batch]:6.1f} img/s"
                  + (f"  ({rates[mode, batch] / rates['exact', batch]:.2f}x the exact evaluation)" if mode == "float"
                     else ""), flush=True)


if __name__ == "__main__":
    main()
