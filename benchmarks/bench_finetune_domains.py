"""Does te finetune pay? The best frozen head, te finetune's default recipe and the plain fine-tuning loop a
practitioner writes, on real image sets of several kinds (none of them ImageNet photos), at the backbone's
full resolution, in one process; the held-out set (benchmarks/_domains.py HELD_OUT) is reported apart.

    python benchmarks/bench_finetune_domains.py                        # glyphs, digits-blocky, icons; cards held out
    python benchmarks/bench_finetune_domains.py --domains icons --json results.json
    python benchmarks/bench_finetune_domains.py --quick          # digits-blocky, 10 per class, a 1-minute budget

Per data set (train/CLASS + test/CLASS folders, no val), with EfficientNet-Lite0's real ImageNet weights
at 224 px, each row timed on the wall clock from the image folder on:
  frozen   te extract + `te train --head all --sweep`: the head best by te train's selection, its test accuracy
  te       te extract + `te train --head linear` + `te finetune --from` it with the default recipe (the
           schedule sized to the default budget; `--augment crop`: no flips, a mirrored glyph, digit,
           card or icon is another picture)
  plain    the 30-line loop of issue 39: torchvision ImageFolder over all of train, the pretrained backbone
           with a new Linear head, model.train() (BatchNorm statistics follow the batches), AdamW lr 1e-3
           weight decay 0.05, one-cycle schedule with 10% warm-up, label smoothing 0.1,
           RandomResizedCrop(224, scale 0.6-1), batch 32, 8 epochs, the last epoch's weights (no
           selection), under bf16 autocast where te trained in bf16 (else fp32: the same arithmetic)
Targets per data set: te >= the better of (frozen, plain) - 0.5 point, in <= the plain loop's wall time;
te >= frozen + 3 points on at least two sets far from ImageNet (the summary row).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from _domains import DOMAINS, HELD_OUT
from _results import add_suite_options, pick_sizes, print_rows, ratio, result_row, write_results

BACKBONE = "efficientnet_lite0"
DEFAULT_DOMAINS = ("glyphs", "digits-blocky", "icons", HELD_OUT)
FAR = ("glyphs", "digits-blocky", "icons", "cards")  # far from ImageNet photos (the +3 points target)
SIZES = {"full": {"domains": ",".join(DEFAULT_DOMAINS), "per_class": 80, "plain_epochs": 8, "backbone": BACKBONE,
                  "weights": "DEFAULT"},
         "quick": {"domains": "digits-blocky", "per_class": 10, "plain_epochs": 2, "budget": 1.0, "backbone": BACKBONE,
                   "weights": "DEFAULT"},
         # smoke: a small random-init model at 64 px, 4 digits per class, batch 8, heads unswept, a
         # 12-second budget
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


PLAIN = {"lr": 1e-3, "weight_decay": 0.05, "warmup": 0.1, "label_smoothing": 0.1, "crop_scale": 0.6, "batch": 32}


def plain_loop(data: Path, epochs: int, backbone: str, weights: str, precision: str, input_size: int | None,
               batch: int = PLAIN["batch"], seed: int = 0) -> tuple[float, float]:
    """(test accuracy, wall seconds) of the fine-tuning loop a user writes with torchvision (module docstring),
    in fp32 or under bf16 autocast (`precision`), at the weights' resolution or `input_size`."""
    import contextlib

    from torchvision import datasets, transforms

    from transfer_engine.backbones import create_backbone

    torch.manual_seed(seed)
    start = time.perf_counter()
    bb = create_backbone(backbone, weights=weights)
    p = bb.preprocess
    crop = input_size or p.crop_size
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else contextlib.nullcontext
    # No flip, here as in te's row (--augment crop): a mirrored glyph or card is another picture.
    train_tf = transforms.Compose([transforms.RandomResizedCrop(crop, scale=(PLAIN["crop_scale"], 1.0)),
                                   transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])
    test_tf = p.transform() if input_size is None else transforms.Compose(
        [transforms.Resize(crop), transforms.CenterCrop(crop), transforms.ToTensor(), transforms.Normalize(p.mean, p.std)])
    train_set = datasets.ImageFolder(str(data / "train"), train_tf)
    test_set = datasets.ImageFolder(str(data / "test"), test_tf)
    model = torch.nn.Sequential(bb.model, torch.nn.Linear(bb.feature_dim, len(train_set.classes)))
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch, shuffle=True, drop_last=True)
    opt = torch.optim.AdamW(model.parameters(), lr=PLAIN["lr"], weight_decay=PLAIN["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=PLAIN["lr"], total_steps=epochs * len(loader),
                                                   pct_start=PLAIN["warmup"])
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            with autocast():
                logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y, label_smoothing=PLAIN["label_smoothing"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    model.eval()
    correct = 0
    with torch.inference_mode():
        for x, y in torch.utils.data.DataLoader(test_set, batch_size=64):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(test_set), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domains", default=None,
                        help="comma-separated: " + ", ".join(DOMAINS) + f" (default {','.join(DEFAULT_DOMAINS)}; "
                             "digits-blocky with --quick)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="digits per class (default 80; 10 with --quick; glyphs, icons and cards use all)")
    parser.add_argument("--budget", type=float, default=None,
                        help="te finetune --budget (default: te's own; 1 minute with --quick)")
    parser.add_argument("--plain-epochs", type=int, default=None, help="default 8; 2 with --quick")
    parser.add_argument("--backbone", default=None, help=f"default {BACKBONE}")
    parser.add_argument("--weights", default=None, help="default DEFAULT")
    add_suite_options(parser, "one data set, 10 digits per class, a 1-minute budget, 2 plain epochs")
    args = parser.parse_args()
    suite = pick_sizes(args, **{k: dict(v) for k, v in SIZES.items()})
    extra = {k: SIZES[suite][k] for k in ("input_size", "epochs", "batch_size") if k in SIZES[suite]}

    from transfer_engine.finetune import finetune

    rows, config = [], {"suite": suite, "quick": args.quick, "backbone": args.backbone, "held_out": HELD_OUT,
                        "input_size": extra.get("input_size", 224), "threads": torch.get_num_threads(),
                        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "domains": {}}
    gains = {}
    for name in args.domains.split(","):
        label = f"{name} (held out)" if name == HELD_OUT else name
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            counts = DOMAINS[name](root / "data", args.per_class)
            frozen = frozen_and_linear(root / "data", root, args.backbone, args.weights, SIZES[suite].get("sweep", True))
            t0 = time.perf_counter()
            options = {"augment": "crop", **extra}
            if args.budget is not None:
                options.update(budget_minutes=args.budget)
            if "epochs" in extra:
                options.update(recipe="schedule")  # --epochs alone would make it a fixed recipe
            tuned = finetune(root / "ft", from_run_dir=frozen["linear_run"], progress=True, **options)
            te_seconds = frozen["lpft_start_seconds"] + time.perf_counter() - t0
            precision = tuned.precision if tuned.precision in ("fp32", "bf16") else "fp32"
            plain_acc, plain_seconds = plain_loop(root / "data", args.plain_epochs, args.backbone, args.weights,
                                                  precision, extra.get("input_size"),
                                                  extra.get("batch_size", PLAIN["batch"]))
        gain = 100 * (tuned.test_accuracy - frozen["frozen_test"])
        gains[name] = gain
        bar = max(frozen["frozen_test"], plain_acc) - 0.005
        verdict = (tuned.search or {}).get("verdict", "no recipe record")
        rows += [
            result_row(f"{label}: te finetune vs the better of (frozen {frozen['frozen_head']}, plain loop) - 0.5 point, "
                       "test accuracy", tuned.test_accuracy, bar, "acc", ratio(tuned.test_accuracy, bar), ">= 1.0x",
                       note=f"{gain:+.1f} points over the frozen head; plain loop {100 * plain_acc:.1f}%; {verdict}"),
            result_row(f"{label}: te finetune vs the plain loop ({args.plain_epochs} epochs, {precision}), wall seconds",
                       te_seconds, plain_seconds, "s", ratio(plain_seconds, te_seconds), ">= 1.0x",
                       note="ratio: plain loop's time over te's (extract + linear head + fine-tuning)"),
        ]
        config["domains"][name] = {
            **counts, "frozen": {k: frozen[k] for k in ("frozen_head", "frozen_val", "frozen_test", "frozen_seconds",
                                                         "linear_test", "leaderboard")},
            "te": {"test": tuned.test_accuracy, "val": tuned.val_accuracy, "before": tuned.before,
                   "best_epoch": tuned.best_epoch, "seconds": te_seconds, "search": tuned.search},
            "plain": {"test": plain_acc, "seconds": plain_seconds, "precision": precision}}
        print(f"{label}: frozen {frozen['frozen_head']} {frozen['frozen_test']:.3f} ({frozen['frozen_seconds']:.0f} s), "
              f"te {tuned.test_accuracy:.3f} ({te_seconds:.0f} s), plain {plain_acc:.3f} ({plain_seconds:.0f} s)",
              file=sys.stderr, flush=True)
    far = sorted((g, n) for n, g in gains.items() if n in FAR)
    if len(far) >= 2:
        second = far[-2][0]  # the second-largest gain: >= 3 points means two sets gained 3 or more
        rows.append(result_row("te finetune over the frozen head, the 2nd-largest gain on sets far from ImageNet (points)",
                               second, 3.0, "pts", ratio(second, 3.0), ">= 1.0x",
                               note=", ".join(f"{n} {g:+.1f}" for g, n in reversed(far))))
    print_rows(rows)
    if args.json:
        write_results(args.json, "finetune_domains", rows, config)


if __name__ == "__main__":
    main()
