"""`te compare` over N backbones against the plain way of answering "which backbone for my data?".

    PYTHONPATH=. python benchmarks/bench_compare.py [--backbones efficientnet_lite0,efficientnet_lite1,...]
                                                    [--limit N] [--quick] [--json PATH]

Both answer the question on the same images (scikit-learn's digits, as te's builtin:digits source decodes
them) with the same splits (te's data set records: train / val / test), in this one process:

  te     `transfer_engine.compare.compare(...)` into an empty cache, end to end: every backbone's
         extraction (te extract's backend choice, its cache writes), LogME, the linear probe with te train's
         sweep and a k-NN probe, and each backbone's serving costs (PyTorch and onnxruntime fp32 timings, the
         ONNX file). Then the re-run a user makes with one more backbone (the last of --backbones, left out
         of the first run): te extracts and fits that one only.
  plain  what a user writes without te, for each backbone: its model and preprocessing (the same loader),
         a torch DataLoader (2 workers, batch 32) over the images into an fp32 channels_last forward pass
         under inference_mode, then scikit-learn's LogisticRegression (lbfgs) on standardized features for
         C in a grid of 7 (1e-3..1e3), the best on val kept and scored on test. The re-run repeats all of it
         for every backbone (no cache).
  plain + np.save  the same, with each backbone's features saved with np.save as they are computed (what a
         user who expects to come back does): its re-run computes the added backbone only and loads the
         others' .npy files. The re-run row compares te's re-run with this; the no-cache re-run stays as an
         informational row (the earlier comparison, which by definition redid every backbone).

Rows: seconds of each (ratio = plain / te: te's speedup, no target; the speed is the
extraction backend's, which on CPUs is mostly onnxruntime's), and per backbone the val accuracy of te's
linear probe and scikit-learn's (informational: both select on val). te does more work than the plain way
(LogME, the k-NN probe, timing each runtime); none of it is left out of its time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _results import add_suite_options, pick_sizes, print_rows, result_row, write_results

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3)
QUICK = {"backbones": "efficientnet_lite0,efficientnet_lite1", "limit": 200, "weights": "DEFAULT"}
FULL = {"backbones": "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2", "limit": None, "weights": "DEFAULT"}
SMOKE = {"backbones": "mobilenet_v3_small,resnet18", "limit": 40, "weights": "none"}


def run_te(names: list[str], cache: Path, out: Path, limit: int | None, weights: str):
    from transfer_engine.compare import compare

    t = time.perf_counter()
    result = compare("builtin:digits", cache, names, out=out, limit=limit, weights=weights, progress=False)
    return result, time.perf_counter() - t


def plain_features(name: str, samples, source, weights: str) -> np.ndarray:
    from transfer_engine.backbones import create_backbone

    bb = create_backbone(name, weights)
    transform = bb.transform()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            return transform(source.decode(samples[i], source.read_bytes(samples[i])))

    model = bb.model.eval().to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(Images(), batch_size=32, num_workers=2)
    parts = []
    with torch.inference_mode():
        for batch in loader:
            parts.append(model(batch.contiguous(memory_format=torch.channels_last)).numpy())
    return np.concatenate(parts)


def plain_probe(features: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> tuple[float, float]:
    """scikit-learn's logistic regression over the C grid, chosen on val: (val, test) accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    tr, va, te = (splits == s for s in ("train", "val", "test"))
    scaler = StandardScaler().fit(features[tr])
    x = scaler.transform(features)
    best = (-1.0, None)
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000).fit(x[tr], labels[tr])
        val = clf.score(x[va], labels[va])
        if val > best[0]:
            best = (val, clf)
    return best[0], best[1].score(x[te], labels[te]) if te.any() else float("nan")


def run_plain(names: list[str], cache: Path, dataset: str, weights: str,
              saved: Path) -> dict[str, tuple[float, float, float, float]]:
    """{backbone: (val, test, seconds, seconds to load its saved features)} of the plain way, each backbone
    timed on its own, its features saved under `saved` with np.save as part of its time."""
    from transfer_engine.cache import FeatureCache
    from transfer_engine.data.sources import Sample, open_source

    with FeatureCache.open(cache, create=False) as fc:  # te's records: the same images and splits
        records = fc.dataset(dataset).records
    source = open_source("builtin:digits")
    samples = [Sample(r.path, r.label, r.split) for r in records]
    labels = np.array([r.label for r in records])
    splits = np.array([r.split for r in records])
    out = {}
    saved.mkdir(parents=True, exist_ok=True)
    for name in names:
        t = time.perf_counter()
        features = plain_features(name, samples, source, weights)
        np.save(saved / f"{name}.npy", features)
        val, test = plain_probe(features, labels, splits)
        seconds = time.perf_counter() - t
        t = time.perf_counter()
        np.load(saved / f"{name}.npy")
        out[name] = (val, test, seconds, time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--weights", default=None, help="weights of every backbone (default DEFAULT)")
    add_suite_options(p)
    a = p.parse_args()
    limit_given = a.limit is not None
    suite = pick_sizes(a, full=FULL, quick=QUICK, smoke=SMOKE)
    cfg = {"backbones": a.backbones, "limit": a.limit if limit_given or suite != "full" else None,
           "weights": a.weights, "suite": suite}
    names = cfg["backbones"].split(",")
    if len(names) < 2:
        sys.exit("--backbones: give at least 2 (the last one is the re-run's added backbone)")
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="te-bench-compare-") as tmp:
        work = Path(tmp)
        first, rest = names[:-1], names
        result, te_first = run_te(first, work / "cache", work / "out", cfg["limit"], cfg["weights"])
        again, te_again = run_te(rest, work / "cache", work / "out", cfg["limit"], cfg["weights"])
        plain = run_plain(rest, work / "cache", result.dataset, cfg["weights"], work / "plain-features")
    # first run: the plain way computes (and saves) its first backbones
    plain_first = sum(plain[n][2] for n in first)
    # re-run: with its saved features the plain way computes the added backbone and loads the others';
    # without them it redoes every backbone
    plain_saved_again = plain[names[-1]][2] + sum(plain[n][3] for n in first)
    plain_all = sum(plain[n][2] for n in rest)
    images = again.entries[0].images
    rows = [
        result_row(f"te compare vs plain loop (DataLoader + PyTorch fp32 + LogisticRegression C grid, features "
                   f"np.save'd), {len(first)} backbones, {images} digits", te_first, plain_first, "s",
                   plain_first / te_first, note="te also computes LogME, a k-NN probe and each runtime's costs",
                   headline=True),
        result_row(f"re-run with backbone {len(rest)} added vs the plain loop that saved its features (np.save)",
                   te_again, plain_saved_again, "s", plain_saved_again / te_again,
                   note="both compute the added backbone only; the plain way loads the others' .npy files"),
        result_row(f"re-run with backbone {len(rest)} added vs the plain loop without saved features "
                   "(informational)", te_again, plain_all, "s", plain_all / te_again,
                   note="the earlier re-run row: the plain way redoes every backbone"),
    ]
    for e in again.entries:
        val, test, _, _ = plain.get(e.backbone, (float("nan"), float("nan"), 0.0, 0.0))
        if e.linear_val is None:
            continue
        rows.append(result_row(f"{e.backbone}: linear val accuracy, te vs scikit-learn", 100 * e.linear_val,
                               100 * val, "%", e.linear_val / val,
                               note=f"test: te {100 * (e.linear_test or float('nan')):.1f}%, scikit-learn "
                                    f"{100 * test:.1f}%; LogME {e.logme:.3f}"))
    print_rows(rows)
    print(f"te's ranking: {', '.join(e.backbone for e in again.entries)}; LogME tau {again.logme_tau}")
    print(f"recommendation: {again.recommendation}")
    if a.json:
        write_results(a.json, "compare", rows, {**cfg, "quick": a.quick, "machine": platform.processor() or
                                                platform.machine(), "images": images})


if __name__ == "__main__":
    main()
