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
  plain loop the training loop a user writes: model.train() (BatchNorm in train mode), NCHW, AdamW over
             all parameters, the backbone's transform in a DataLoader, the same images and batch size, in
             fp32 and, where te's run trained in bf16, under bf16 autocast too: the faster is the baseline;
             timed over one epoch of steps, against te's training time of the lp-ft run (te: channels_last,
             frozen BatchNorm statistics, per-image seeded order, a checkpoint per epoch). When bf16 is the
             faster, the fp32 loop stays as an informational row (the earlier comparison)
Targets: LP-FT >= the linear run and >= fine-tuning from a random head (LP-FT's quality claim);
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

from _results import add_suite_options, pick_sizes, print_rows, ratio, result_row, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "finetune"))
from linear_run import make_linear_run  # noqa: E402  (the te train stand-in at a chosen input size)


def plain_loop_rate(backbone: str, weights: str, input_size: int, batch: int, limit: int | None, seed: int,
                    precision: str = "fp32") -> float:
    """Images/s of the loop a user writes: one epoch of training steps over the train split, in fp32 or
    under bf16 autocast (`precision`)."""
    import contextlib

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
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    for x, y in loader:
        with autocast():
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default=None, help="default efficientnet_lite0")
    parser.add_argument("--weights", default=None, help="default DEFAULT")
    parser.add_argument("--input-size", type=int, default=None, help="pixels (default 64; 32 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="default 2")
    parser.add_argument("--batch", type=int, default=None, help="default 32")
    parser.add_argument("--limit", type=int, default=None, help="digits used (default all 1,797)")
    add_suite_options(parser, "small sizes (about a minute on 2 cores)")
    args = parser.parse_args()
    common_sizes = {"backbone": "efficientnet_lite0", "weights": "DEFAULT", "epochs": 2, "batch": 32}
    suite = pick_sizes(args, full={**common_sizes, "input_size": 64}, quick={**common_sizes, "input_size": 32},
                       smoke={"backbone": "mobilenet_v3_small", "weights": "none", "epochs": 1, "batch": 8,
                              "input_size": 32, "limit": 80})
    size = args.input_size
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
        precision = lpft.precision if lpft.precision in ("fp32", "bf16") else "fp32"
        # the plain loop in fp32 and, where te trained in bf16, under bf16 autocast too: the faster is the baseline
        plain_rates = {p: plain_loop_rate(args.backbone, args.weights, size, args.batch, limit, seed=0, precision=p)
                       for p in dict.fromkeys(("fp32", precision))}
        plain_best = max(plain_rates, key=plain_rates.get)
        base_rate, fp32_rate = plain_rates[plain_best], plain_rates["fp32"]

    what = f"{args.backbone} @{size}px, {args.epochs} epochs, {'%d' % limit if limit else 'all'} digits"
    rows = [
        result_row(f"LP-FT vs the linear run, test accuracy ({what})", lpft.test_accuracy,
                   lpft.parent["test_accuracy"], "acc", ratio(lpft.test_accuracy, lpft.parent["test_accuracy"]), ">= 1.0x",
                   note=f"val {lpft.before['val_accuracy']:.3f} -> {lpft.val_accuracy:.3f}, kept epoch "
                        f"{lpft.best_epoch}", headline=True),
        result_row(f"LP-FT vs fine-tuning from a random head, test accuracy ({what})", lpft.test_accuracy,
                   ft.test_accuracy, "acc", ratio(lpft.test_accuracy, ft.test_accuracy), ">= 1.0x"),
        result_row(f"te finetune training ({precision}) vs the plain PyTorch loop at its faster precision "
                   f"({plain_best}; {args.backbone} @{size}px)", te_rate, base_rate, "img/s", te_rate / base_rate, None,
                   note="te: channels_last, frozen BN statistics, seeded per-image augmentation, checkpoints; "
                        "the plain loop: NCHW, BatchNorm in train mode; plain img/s " +
                        ", ".join(f"{p} {r:.1f}" for p, r in plain_rates.items())),
    ]
    if plain_best != "fp32":
        rows.append(result_row(f"te finetune training ({precision}) vs the plain PyTorch loop in fp32 (informational)",
                               te_rate, fp32_rate, "img/s", te_rate / fp32_rate, None,
                               note="the earlier speed row: te's precision against the plain loop's fp32"))
    config = {"suite": suite, "precision": precision, "plain_img_s": plain_rates, "backbone": args.backbone, "weights": args.weights, "input_size": size, "epochs": args.epochs,
              "batch": args.batch, "limit": limit, "quick": args.quick, "threads": torch.get_num_threads(),
              "linear_run_seconds": round(linear_seconds, 1), "lpft_seconds": lpft.seconds, "ft_seconds": ft.seconds,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}
    print_rows(rows)
    if args.json:
        write_results(args.json, "finetune", rows, config)


if __name__ == "__main__":
    main()
