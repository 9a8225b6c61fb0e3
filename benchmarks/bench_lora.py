"""What --strategy lora saves against full fine-tuning: training speed, peak memory, trainable parameters.

    python benchmarks/bench_lora.py                 # vit_b_16 (torchvision) and timm/vit_small_patch16_224, batch 16
    python benchmarks/bench_lora.py --quick         # timm/vit_tiny_patch16_224, batch 8
    python benchmarks/bench_lora.py --backbones vit_b_32 --batch 32 --steps 4 --json results.json

Per backbone, two variants of te finetune's training step (its `Trainer`: AdamW, warmup + cosine, gradient
clipping, te's --precision auto, channels_last), each in a fresh process so its peak RSS is its own:
  full   --strategy no_freeze: every backbone weight and the head train (the baseline)
  lora   --strategy lora (te's defaults: rank 8, alpha 16, adapters on qkv, proj and mlp): adapters and head
Both start from the same random-init weights (--weights none) and train the same batches of real digits
at the backbone's input size. Reported per variant: images/s of the timed steps (after one untimed
warm-up step), peak RSS of the process (ru_maxrss: torch, peft and the model included) and its growth
over the RSS just before the first step (gradients, optimizer state, activations), and trainable
parameters; rows give lora against full. With --repeats N each variant runs N times, alternating, and
the best images/s is kept (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _results import add_suite_options, pick_sizes, print_rows, result_row, write_results

VARIANTS = ("full", "lora")
SIZES = {"full": {"backbones": "vit_b_16,timm/vit_small_patch16_224", "batch": 16, "steps": 5, "repeats": 2},
         "quick": {"backbones": "timm/vit_tiny_patch16_224", "batch": 8, "steps": 3, "repeats": 1},
         "smoke": {"backbones": "timm/test_vit", "batch": 2, "steps": 2, "repeats": 1}}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(variant: str, backbone: str, batch: int, steps: int) -> dict:
    """Train one variant for `steps` steps in this process; what it measured."""
    import torch

    from bench_train_step import digits_batches
    from transfer_engine.backbones import create_backbone
    from transfer_engine.core.configs import FinetuneConfig
    from transfer_engine.finetune.loop import EpochSums, Trainer
    from transfer_engine.finetune.precision import choose_precision
    from transfer_engine.finetune.strategies import backbone_blocks, make_strategy
    from transfer_engine.runs import Classifier

    torch.manual_seed(0)
    bb = create_backbone(backbone, weights="none", seed=0)
    model = Classifier(bb.model, torch.nn.Linear(bb.feature_dim, 10))
    size = bb.preprocess.crop_size
    adapters = None
    if variant == "lora":
        from transfer_engine.finetune import lora

        adapters = lora.attach(model.backbone, input_size=size, name=backbone)
    blocks = backbone_blocks(model.backbone)
    strategy = make_strategy("lora" if adapters else "no_freeze", len(blocks), freeze_bn=True,
                             adapters=[b.has_adapters for b in blocks])
    device = torch.device("cpu")
    precision, _ = choose_precision("auto", device)
    settings = FinetuneConfig(from_run_dir="bench", lr=1e-4).fixed()  # the fixed recipe at lr 1e-4; no run is read
    trainer = Trainer(model, blocks, strategy, settings, num_classes=10, total_steps=steps,
                      device=device, precision=precision)
    trainer.set_phase(0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    batches = digits_batches(bb.preprocess, batch, steps)
    before = _rss_mb()
    trainer.train_steps(batches[:1], EpochSums())  # warm-up (allocations, one-time kernel setup): not timed
    sums = EpochSums()
    began = time.perf_counter()
    trainer.train_steps(batches[1:], sums)
    seconds = time.perf_counter() - began
    return {"images_per_second": sums.count / seconds, "peak_rss_mb": _rss_mb(),
            "rss_before_training_mb": before, "trainable": trainable,
            "backbone_parameters": adapters.base_parameters if adapters else sum(p.numel() for p in bb.model.parameters()),
            "input_size": size, "precision": precision, "threads": torch.get_num_threads(),
            "mean_loss": sums.loss / sums.count}


def run_child(variant: str, backbone: str, batch: int, steps: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--backbones", backbone, "--batch", str(batch),
                          "--steps", str(steps)], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if out.returncode != 0:
        raise SystemExit(f"{variant} on {backbone} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=None, help="comma-separated transformer backbones")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 16; 8 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps per variant, the first untimed (default 5)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per variant, alternating; best img/s kept")
    parser.add_argument("--child", choices=VARIANTS, default=None, help=argparse.SUPPRESS)
    add_suite_options(parser, "timm/vit_tiny_patch16_224, batch 8, 3 steps")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.backbones, args.batch, args.steps)))
        return
    suite = pick_sizes(args, **{k: dict(v) for k, v in SIZES.items()})
    rows, results = [], {}
    for backbone in args.backbones.split(","):
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for _ in range(args.repeats):
            for variant in VARIANTS:
                runs[variant].append(run_child(variant, backbone, args.batch, args.steps))
                r = runs[variant][-1]
                print(f"{backbone} {variant}: {r['images_per_second']:.2f} img/s, peak RSS {r['peak_rss_mb']:.0f} MB "
                      f"({r['peak_rss_mb'] - r['rss_before_training_mb']:.0f} MB over the start of training), "
                      f"{r['trainable']:,} trainable parameters", file=sys.stderr, flush=True)
        best = {v: max(rs, key=lambda r: r["images_per_second"]) for v, rs in runs.items()}
        results[backbone] = {v: rs for v, rs in runs.items()}
        full, lora = best["full"], best["lora"]
        what = f"({backbone} @{full['input_size']}px, batch {args.batch}, {full['precision']})"
        grow = {v: b["peak_rss_mb"] - b["rss_before_training_mb"] for v, b in best.items()}
        rows += [
            result_row(f"lora vs full fine-tuning: training speed {what}", lora["images_per_second"],
                       full["images_per_second"], "img/s", lora["images_per_second"] / full["images_per_second"]),
            result_row(f"lora vs full fine-tuning: peak RSS {what}", lora["peak_rss_mb"], full["peak_rss_mb"], "MB",
                       lora["peak_rss_mb"] / full["peak_rss_mb"],
                       note=f"training's growth over the RSS before the first step: {grow['lora']:.0f} vs "
                            f"{grow['full']:.0f} MB"),
            result_row(f"lora vs full fine-tuning: trainable parameters {what}", lora["trainable"], full["trainable"],
                       "params", lora["trainable"] / full["trainable"],
                       note=f"the backbone has {full['backbone_parameters']:,}"),
        ]
    print_rows(rows)
    if args.json:
        write_results(args.json, "lora", rows, {"suite": suite, "backbones": args.backbones, "batch": args.batch,
                                                "steps": args.steps, "repeats": args.repeats,
                                                "cpu": platform.processor() or platform.machine(), "results": results})


if __name__ == "__main__":
    main()
