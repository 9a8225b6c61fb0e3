"""Which training step is fastest on this CPU, and does it keep the loss curve?

    python benchmarks/bench_train_step.py                          # EfficientNet-Lite0 at 224 px, batch 32
    python benchmarks/bench_train_step.py --steps 4 --json results.json
    python benchmarks/bench_train_step.py --quick       # batch 16, 3 steps, no torch.compile (minutes of compiling)

te finetune's training step (its `Trainer`: AdamW, warmup + cosine, gradient clipping, the backbone in eval
mode under frozen BatchNorm statistics, the default) over the same real images (the digits at the
backbone's resolution) in one process, per variant:
  nchw            fp32, NCHW memory layout (what a plain PyTorch loop runs)
  channels_last   fp32, NHWC (te's default)
  compiled        channels_last + torch.compile of the model (inductor; compile time reported apart)
  bf16            channels_last + bf16 autocast (native on Zen 4 / Sapphire Rapids, emulated on AVX2 CPUs)
Each variant starts from the same weights and trains the same batches; the loss after the last step is
compared with the baseline's (nchw) so a faster variant that changes the curve shows up. Reported: images/s
of the timed steps (after one warm-up step) and the ratio against nchw.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time

import torch

from _results import add_suite_options, pick_sizes, print_rows, result_row, write_results

VARIANTS = ("nchw", "channels_last", "compiled", "bf16")
# bf16 only where it is native in the quick suite: emulated, one step takes minutes. The smoke size runs every
# variant but `compiled`, whose compile alone takes minutes on 2 cores (the full suite runs it).
SIZES = {"full": {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "batch": 32, "steps": 6,
                  "variants": ",".join(VARIANTS)},
         "quick": {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "batch": 16, "steps": 3,
                   "variants": "nchw,channels_last,bf16"},
         "smoke": {"backbone": "mobilenet_v3_small", "weights": "none", "batch": 2, "steps": 2,
                   "variants": "nchw,channels_last,bf16"}}


def digits_batches(preprocess, batch: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`steps` batches of scikit-learn's real digits, upscaled and normalized as the backbone expects."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    tf = preprocess.transform()
    images, labels = [], []
    for i in range(batch * steps):
        ink = (255 - digits.images[i] * (255 / 16)).astype(np.uint8)
        images.append(tf(Image.fromarray(ink).resize((preprocess.resize_size,) * 2, Image.BICUBIC).convert("RGB")))
        labels.append(int(digits.target[i]))
    x, y = torch.stack(images), torch.tensor(labels)
    return [(x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(steps)]


def run_variant(name: str, model: torch.nn.Module, batches, total_steps: int) -> dict:
    """Train `model` (a copy) over `batches` with te's Trainer; images/s after the first step, last loss."""
    from transfer_engine.core.configs import FinetuneConfig
    from transfer_engine.finetune.loop import EpochSums, Trainer
    from transfer_engine.finetune.strategies import backbone_blocks, make_strategy

    model = copy.deepcopy(model)
    blocks = backbone_blocks(model.backbone)
    strategy = make_strategy("no_freeze", len(blocks), freeze_bn=True)
    # the fixed recipe's settings at lr 1e-4 (from_run_dir only names the run: no run is read)
    settings = FinetuneConfig(from_run_dir="bench", lr=1e-4, channels_last=name != "nchw").fixed()
    trainer = Trainer(model, blocks, strategy, settings, num_classes=10, total_steps=total_steps,
                      device=torch.device("cpu"), precision="bf16" if name == "bf16" else "fp32")
    if name == "compiled":
        trainer.replica.model = torch.compile(trainer.model)  # what train_steps calls
    trainer.set_phase(0)
    losses: list[float] = []
    times: list[float] = []
    for images, labels in batches:
        sums = EpochSums()
        t0 = time.perf_counter()
        trainer.train_steps([(images, labels)], sums)
        times.append(time.perf_counter() - t0)
        losses.append(sums.loss / sums.count)
    timed = times[1:]
    return {"images_per_second": len(timed) * len(batches[0][1]) / sum(timed), "first_step_seconds": times[0],
            "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=None, help="default 32; 16 with --quick")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per variant (the first is not timed; default 6, 3 with --quick)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated; the first is the baseline of the ratios (default: " + ",".join(VARIANTS) +
                             "; with --quick no compiled, and bf16 only where native)")
    parser.add_argument("--weights", default=None, help="DEFAULT (pretrained, the default) or none (random init)")
    add_suite_options(parser, "batch 16, 3 steps, no torch.compile")
    args = parser.parse_args()
    suite = pick_sizes(args, **{k: dict(v) for k, v in SIZES.items()})
    from transfer_engine.core.cpu import has_native_bf16

    if suite == "quick" and not has_native_bf16():
        args.variants = ",".join(v for v in args.variants.split(",") if v != "bf16")

    from transfer_engine.backbones import create_backbone
    from transfer_engine.runs import Classifier

    torch.manual_seed(0)
    bb = create_backbone(args.backbone, weights=args.weights)
    model = Classifier(bb.model, torch.nn.Linear(bb.feature_dim, 10))
    batches = digits_batches(bb.preprocess, args.batch, args.steps)
    results = {}
    for name in args.variants.split(","):
        results[name] = run_variant(name, model, batches, args.steps)
        r = results[name]
        print(f"{name}: {r['images_per_second']:.2f} img/s, first step {r['first_step_seconds']:.1f} s, "
              f"losses {' '.join(f'{v:.4f}' for v in r['losses'])}", file=sys.stderr, flush=True)
    base_name = next(iter(results))
    base = results[base_name]
    rows = []
    for name, r in results.items():
        if name == base_name:
            continue
        drift = abs(r["losses"][-1] - base["losses"][-1]) / max(abs(base["losses"][-1]), 1e-12)
        rows.append(result_row(f"training step {name} vs {base_name} ({args.backbone} @{bb.preprocess.crop_size}px, "
                               f"batch {args.batch})", r["images_per_second"], base["images_per_second"], "img/s",
                               r["images_per_second"] / base["images_per_second"], None,
                               note=f"last loss {r['losses'][-1]:.4f} vs {base['losses'][-1]:.4f} ({100 * drift:.1f}% apart); "
                                    f"first step {r['first_step_seconds']:.0f} s"))
    print_rows(rows)
    if args.json:
        write_results(args.json, "train_step", rows, {"suite": suite, "quick": args.quick, "backbone": args.backbone, "batch": args.batch,
                                                      "steps": args.steps, "threads": torch.get_num_threads(),
                                                      "cpu": platform.processor() or platform.machine(),
                                                      "torch": torch.__version__, "results": results})


if __name__ == "__main__":
    main()
