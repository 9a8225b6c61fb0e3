"""te finetune against the alternatives a user has, on the real digits, in one process.

    python benchmarks/bench_finetune.py                 # EfficientNet-Lite0 (ImageNet) at 64 px, 2 epochs
    python benchmarks/bench_finetune.py --quick --json results.json      # 32 px, 2 epochs

Measured in the same run, all from one linear run (a linear head fitted with L-BFGS on cached
features of the backbone at the same input size; tests/finetune/linear_run.py, te train's stand-in
for input sizes te extract does not offer):
  lp-ft      `finetune(from_run_dir=linear)`: LP-FT, te's defaults (no_freeze, AdamW 3e-4, layer decay
             0.9, frozen BatchNorm statistics), no augmentation (8x8 digits)
  linear     the linear run's own test accuracy (on cached features)
  ft         `finetune(backbone=..., head="linear")`: the same epochs and settings from a random head
             (no_freeze), i.e. fine-tuning without the linear-probe warm start
  plain loop the training loop a user writes: model.train() (BatchNorm in train mode), NCHW fp32,
             AdamW over all parameters, the backbone's transform in a DataLoader, the same images and batch
             size; timed over one epoch of steps, against te's training time of the lp-ft run (te:
             channels_last, frozen BatchNorm statistics, per-image seeded order, a checkpoint per epoch)
Targets: LP-FT >= the linear run and >= fine-tuning from a random head (the issue's quality claim);
the speed row has no target (informational: what te's bookkeeping costs or saves).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from _results import print_rows, result_row, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "finetune"))
from linear_run import make_linear_run  # noqa: E402  (the te train stand-in at a chosen input size)


def plain_loop_rate(backbone: str, weights: str, input_size: int, batch: int, limit: int | None, seed: int) -> float:
    """Images/s of the loop a user writes: one epoch of training steps over the train split."""
    from transfer_engine.backbones import create_backbone
    from transfer_engine.data.sources import open_source
    from transfer_engine.finetune.data import items_from_source, scaled_preprocess

    source = open_source("builtin:digits")
    items = [it for it in items_from_source(source, limit) if it.split == "train"]
    bb = create_backbone(backbone, weights=weights, seed=seed)
    pre = scaled_preprocess(bb.preprocess, input_size)
    transform = pre.transform()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(items)

        def __getitem__(self, i):
            s = items[i].sample
            return transform(source.decode(s, source.read_bytes(s))), items[i].label

    model = torch.nn.Sequential(bb.model, torch.nn.Linear(bb.feature_dim, len(source.class_names))).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    loader = torch.utils.data.DataLoader(Images(), batch_size=batch, shuffle=True, drop_last=True)
    start, seen = time.perf_counter(), 0
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="DEFAULT")
    parser.add_argument("--input-size", type=int, default=None, help="pixels (default 64; 32 with --quick)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="digits used (default all 1,797)")
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute on 2 cores)")
    parser.add_argument("--json", metavar="PATH", default=None, help="write the results for te bench to PATH")
    args = parser.parse_args()
    size = args.input_size or (32 if args.quick else 64)
    limit = args.limit

    from transfer_engine.finetune import finetune

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        linear = make_linear_run(root, args.backbone, weights=args.weights, input_size=size, limit=limit)
        linear_seconds = time.perf_counter() - t0
        common = dict(epochs=args.epochs, batch_size=args.batch, input_size=size, augment="none", limit=limit,
                      progress=False)
        lpft = finetune(root / "lpft", from_run_dir=linear, **common)
        ft = finetune(root / "ft", backbone=args.backbone, weights=args.weights, data="builtin:digits", head="linear",
                      strategy="no_freeze", **common)
        te_rate = lpft.images_per_second
        base_rate = plain_loop_rate(args.backbone, args.weights, size, args.batch, limit, seed=0)

    what = f"{args.backbone} @{size}px, {args.epochs} epochs, {'%d' % limit if limit else 'all'} digits"
    rows = [
        result_row(f"LP-FT vs the linear run, test accuracy ({what})", lpft.test_accuracy,
                   lpft.parent["test_accuracy"], "acc", lpft.test_accuracy / lpft.parent["test_accuracy"], ">= 1.0x",
                   note=f"val {lpft.before['val_accuracy']:.3f} -> {lpft.val_accuracy:.3f}, kept epoch "
                        f"{lpft.best_epoch}"),
        result_row(f"LP-FT vs fine-tuning from a random head, test accuracy ({what})", lpft.test_accuracy,
                   ft.test_accuracy, "acc", lpft.test_accuracy / ft.test_accuracy, ">= 1.0x"),
        result_row(f"te finetune training vs the plain PyTorch loop ({args.backbone} @{size}px)",
                   te_rate, base_rate, "img/s", te_rate / base_rate, None,
                   note="te: channels_last, frozen BN statistics, seeded per-image augmentation, checkpoints"),
    ]
    config = {"backbone": args.backbone, "weights": args.weights, "input_size": size, "epochs": args.epochs,
              "batch": args.batch, "limit": limit, "quick": args.quick, "threads": torch.get_num_threads(),
              "linear_run_seconds": round(linear_seconds, 1), "lpft_seconds": lpft.seconds, "ft_seconds": ft.seconds,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    print_rows(rows)
    if args.json:
        write_results(args.json, "finetune", rows, config)


if __name__ == "__main__":
    main()
