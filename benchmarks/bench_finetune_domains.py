"""Does te finetune pay? Frozen heads, te's LP-FT recipe search and a plain PyTorch loop, on real image sets
far from ImageNet photos, at the backbone's full resolution, in one process.

    python benchmarks/bench_finetune_domains.py                        # glyphs, digits-blocky, digits-smooth
    python benchmarks/bench_finetune_domains.py --domains glyphs --json results.json
    python benchmarks/bench_finetune_domains.py --quick          # digits-blocky, 10 per class, a 1-minute search

Per data set (benchmarks/_domains.py; train/CLASS + test/CLASS folders, no val), with EfficientNet-Lite0's
real ImageNet weights at 224 px, each row timed on the wall clock from the image folder on:
  frozen   te extract + `te train --head all --sweep`: the head best on val, its test accuracy
  lp-ft    te extract + `te train --head linear` + `te finetune --from` it with the default recipe search
           (`--budget` minutes; the held-out val of te train selects; the start stays a candidate), with
           `--augment crop` (no flips: a mirrored letter or digit is another glyph)
  plain    the loop a user writes: torchvision ImageFolder, RandomResizedCrop (no flip), the pretrained
           backbone with a new Linear head, model.train(), AdamW lr 1e-4 (weight decay 0.01), batch 32,
           10 epochs, the last epoch's weights, at the precision te's fine-tuning chose (bf16 autocast
           where te trained in bf16, else fp32: the same arithmetic on both sides of the time row)
Targets: LP-FT >= the best frozen head + 3 points on at least one domain-shifted set and never
more than 0.5 point below it; LP-FT >= the plain loop's accuracy at <= its wall time.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from _domains import DOMAINS
from _results import add_suite_options, pick_sizes, print_rows, ratio, result_row, write_results

BACKBONE = "efficientnet_lite0"
SIZES = {"full": {"domains": ",".join(DOMAINS), "per_class": 80, "plain_epochs": 10, "backbone": BACKBONE,
                  "weights": "DEFAULT"},
         "quick": {"domains": "digits-blocky", "per_class": 10, "plain_epochs": 2, "budget": 1.0, "backbone": BACKBONE,
                   "weights": "DEFAULT"},
         # smoke: a small random-init model at 64 px, 4 digits per class, batch 8, heads unswept, a
         # 12-second search
         "smoke": {"domains": "digits-blocky", "per_class": 4, "plain_epochs": 1, "budget": 0.2,
                   "backbone": "mobilenet_v3_small", "weights": "none", "input_size": 64, "epochs": 2,
                   "batch_size": 8, "sweep": False}}


def frozen_and_linear(data: Path, root: Path, backbone: str, weights: str, sweep: bool = True) -> dict:
    """te extract, then every head swept (the frozen row; `sweep` False: every head at its defaults) and a
    linear head on train only (LP-FT's start)."""
    from transfer_engine.extract import extract
    from transfer_engine.train import train, train_all

    t0 = time.perf_counter()
    extract(backbone, str(data), root / "cache", weights=weights, name="d", progress=False)
    extracted = time.perf_counter() - t0
    t1 = time.perf_counter()
    t_sweep = time.perf_counter()
    board = train_all(root / "cache", out=root / "heads", dataset="d", sweep=sweep, progress=False)
    print(f"extract {extracted:.0f} s, heads {time.perf_counter() - t_sweep:.0f} s", file=sys.stderr, flush=True)
    swept = time.perf_counter() - t1
    t2 = time.perf_counter()
    linear = train(root / "cache", head="linear", out=root / "linear", dataset="d", progress=False)
    fitted = time.perf_counter() - t2
    best = board.best
    return {"frozen_test": best.metrics["test_accuracy"], "frozen_head": best.head,
            "frozen_val": best.metrics["val_accuracy"], "frozen_seconds": extracted + swept,
            "linear_run": root / "linear", "linear_test": linear.metrics["test_accuracy"],
            "lpft_start_seconds": extracted + fitted,
            "leaderboard": {r.head: (r.metrics["val_accuracy"], r.metrics["test_accuracy"]) for r in board}}


def plain_loop(data: Path, epochs: int, backbone: str, weights: str, precision: str, input_size: int | None,
               seed: int = 0) -> tuple[float, float]:
    """(test accuracy, wall seconds) of the fine-tuning loop a user writes with torchvision, in fp32 or under
    bf16 autocast (`precision`), at the weights' resolution or `input_size`."""
    import contextlib

    from torchvision import datasets, transforms

    from transfer_engine.backbones import create_backbone

    torch.manual_seed(seed)
    start = time.perf_counter()
    bb = create_backbone(backbone, weights=weights)
    p = bb.preprocess
    crop = input_size or p.crop_size
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    # No flip, here as in te's row (--augment crop): a mirrored letter or digit is another glyph.
    train_tf = transforms.Compose([transforms.RandomResizedCrop(crop), transforms.ToTensor(),
                                   transforms.Normalize(p.mean, p.std)])
    test_tf = p.transform() if input_size is None else transforms.Compose(
        [transforms.Resize(crop), transforms.CenterCrop(crop), transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])
    train_set = datasets.ImageFolder(str(data / "train"), train_tf)
    test_set = datasets.ImageFolder(str(data / "test"), test_tf)
    model = torch.nn.Sequential(bb.model, torch.nn.Linear(bb.feature_dim, len(train_set.classes)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(train_set, batch_size=32, shuffle=True)
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            with autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in torch.utils.data.DataLoader(test_set, batch_size=64):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(test_set), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default=None,
                        help="comma-separated: " + ", ".join(DOMAINS) + " (default all; digits-blocky with --quick)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="digits per class (default 80; 10 with --quick; the glyphs use every font)")
    parser.add_argument("--budget", type=float, default=None,
                        help="te finetune --budget (default: te's own; 1 minute with --quick)")
    parser.add_argument("--plain-epochs", type=int, default=None, help="default 10; 2 with --quick")
    parser.add_argument("--backbone", default=None, help=f"default {BACKBONE}")
    parser.add_argument("--weights", default=None, help="default DEFAULT")
    add_suite_options(parser, "one data set, 10 digits per class, a 1-minute search, 2 plain epochs")
    args = parser.parse_args()
    suite = pick_sizes(args, **{k: dict(v) for k, v in SIZES.items()})
    extra = {k: SIZES[suite][k] for k in ("input_size", "epochs", "batch_size") if k in SIZES[suite]}

    from transfer_engine.finetune import finetune

    rows, config = [], {"suite": suite, "quick": args.quick, "backbone": args.backbone,
                        "input_size": extra.get("input_size", 224), "threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "domains": {}}
    for name in args.domains.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            counts = DOMAINS[name](root / "data", args.per_class)
            frozen = frozen_and_linear(root / "data", root, args.backbone, args.weights, SIZES[suite].get("sweep", True))
            t0 = time.perf_counter()
            options = {"augment": "crop", **extra}
            if args.budget is not None:
                options.update(budget_minutes=args.budget, recipe="search")
            lpft = finetune(root / "ft", from_run_dir=frozen["linear_run"], progress=True, **options)
            lpft_seconds = frozen["lpft_start_seconds"] + time.perf_counter() - t0
            precision = lpft.precision if lpft.precision in ("fp32", "bf16") else "fp32"
            plain_acc, plain_seconds = plain_loop(root / "data", args.plain_epochs, args.backbone, args.weights,
                                                  precision, extra.get("input_size"))
        gain = 100 * (lpft.test_accuracy - frozen["frozen_test"])
        rows += [
            result_row(f"{name}: LP-FT (search) vs best frozen head ({frozen['frozen_head']}), test accuracy",
                       lpft.test_accuracy, frozen["frozen_test"], "acc", ratio(lpft.test_accuracy, frozen["frozen_test"]),
                       None, note=f"{gain:+.1f} points; {(lpft.search or {}).get('verdict', 'no search')}"),
            result_row(f"{name}: LP-FT vs the plain PyTorch loop ({args.plain_epochs} epochs, {precision}), test accuracy",
                       lpft.test_accuracy, plain_acc, "acc", ratio(lpft.test_accuracy, plain_acc), ">= 1.0x"),
            result_row(f"{name}: LP-FT vs the plain loop ({precision}), wall seconds (extract + linear + search)",
                       lpft_seconds, plain_seconds, "s", ratio(plain_seconds, lpft_seconds), ">= 1.0x",
                       note="ratio: plain loop's time over te's; both train in te's chosen precision"),
        ]
        config["domains"][name] = {
            **counts, "frozen": {k: frozen[k] for k in ("frozen_head", "frozen_val", "frozen_test", "frozen_seconds",
                                                         "linear_test", "leaderboard")},
            "lpft": {"test": lpft.test_accuracy, "val": lpft.val_accuracy, "before": lpft.before,
                     "seconds": lpft_seconds, "search": lpft.search},
            "plain": {"test": plain_acc, "seconds": plain_seconds, "precision": precision}}
        print(f"{name}: frozen {frozen['frozen_head']} {frozen['frozen_test']:.3f} ({frozen['frozen_seconds']:.0f} s), "
              f"lp-ft {lpft.test_accuracy:.3f} ({lpft_seconds:.0f} s), plain {plain_acc:.3f} ({plain_seconds:.0f} s)",
              file=sys.stderr, flush=True)
    print_rows(rows)
    if args.json:
        write_results(args.json, "finetune_domains", rows, config)


if __name__ == "__main__":
    main()
