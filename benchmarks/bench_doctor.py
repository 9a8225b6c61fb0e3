"""te doctor on real images with planted problems, and te doctor at scale.

    python benchmarks/bench_doctor.py [--quick] [--json PATH] [--domains digits,glyphs,icons,cards]
                                      [--scale-rows 10000,30000,100000] [--work DIR]

Planted problems (benchmarks/_planted.py): each real set of benchmarks/_domains.py gets near duplicates of
train images in val/test (one or two of: cropped by at most 10% of the area, resized, colour-shifted,
re-encoded), exact copies across the split and under a conflicting label, and 5% of its train+val labels
flipped; the images are extracted with EfficientNet-Lite0 (real ImageNet weights) and te doctor runs on the
cache. Scored against what was planted:
  near duplicates  precision: the share of the pairs te doctor reports across splits that are planted, or
                   the same picture already in the base set (judged on the pixels: PIXEL_SAME below, e.g.
                   one icon drawn identically by two themes); recall: the share of the planted copies te
                   doctor reports as leaked. Also the stress case, all four operations on every copy.
  exact            the share of the planted byte-for-byte copies (and of the conflicting labels) found.
  label errors     recall at the planted count: of te doctor's first K suspects (K = the planted flips),
                   the share that were flipped; and the precision and recall of cleanlab's own flagged set.
                   Also its mean over FLIP_DRAWS fresh draws of the flips on the same features, te doctor's
                   rule beside the probe alone: how te doctor's label-error rule was chosen (docs/doctor.md).
The threshold sweep over the tuning sets (TUNING: every set but the held-out ones) is printed and kept in the JSON:
it is how te doctor's default threshold was chosen (docs/doctor.md); so are the sweeps of the signature rule
(features' floor x signature threshold) and of the aligned rule (features' floor x aligned score of the copy
thumbnails), how their defaults were chosen. The held-out set takes no part in any
choice and is reported on its own.

Scale: synthetic 1,280-d features (a mixture of classes, int8 in a real cache) of N rows, te doctor end to
end in a fresh process per N (its peak memory from the kernel); the neighbour search against the baseline a
user writes first: a NumPy N x N cosine matrix (at the sizes where it fits in memory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _results import add_suite_options, pick_sizes, print_rows, result_row, write_results

BACKBONE = "efficientnet_lite0"
SIGNATURE = "dct_signature"  # the copy signature (transfer_engine/backbones/signature.py), extracted beside it
THUMBNAIL = "copy_thumbnail"  # the copy thumbnails (same module), extracted beside both in a second cache
TUNING = ("digits", "glyphs", "icons")
# never looked at while choosing any of te doctor's rules or settings: cards (_domains.HELD_OUT), and typefaces,
# built after every default was chosen, the one set of more than 2,000 base images besides icons
HELD_OUT = ("cards", "typefaces")
LOW = 0.85           # te doctor runs at this threshold once; higher thresholds are read from its pairs
GRID = tuple(round(0.85 + 0.005 * i, 3) for i in range(30))
# The signature rule's sweep: te doctor runs once with the signature at its lowest grid values, and every
# (floor, signature threshold) is read from its pairs.
SIGNATURE_GRID = tuple(round(0.95 + 0.005 * i, 3) for i in range(10))
FLOOR_GRID = (0.8, 0.85, 0.9, 0.93, 0.95)
# The aligned rule's sweep (copy thumbnails lined up): te doctor runs once at the lowest values of both grids.
ALIGNED_GRID = (0.97, 0.975, 0.98, 0.985, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999)
ALIGNED_FLOOR_GRID = (0.7, 0.8, 0.85, 0.9, 0.93)
# each swept rule: (its features' floors, its thresholds, where its score sits in a _cross_pairs tuple)
RULES = {"signature": (FLOOR_GRID, SIGNATURE_GRID, 4), "aligned": (ALIGNED_FLOOR_GRID, ALIGNED_GRID, 5)}
FLIP_DRAWS = 8       # fresh draws of the flipped labels, each scored like the planted one (redrawn_flips)
FLIP_DRAW_SEED = 1000
# Two base images are the same picture when their 128x128 greyscale pixels correlate at PIXEL_SAME or more:
# the same pixels up to encoding (an icon two themes draw identically). Not a looser figure: distinct scans
# of a handwritten 1 correlate at 0.98 to 0.996 at every size, and the copy signature, itself a 32 px
# thumbnail, would be scored right on exactly the look-alikes it confuses.
PIXEL_SAME = 0.999
PIXEL_SIDE = 128
SIZES = {"full": {"domains": "digits,glyphs,icons,cards,typefaces", "scale_rows": "10000,30000,100000", "baseline_rows": 20000},
         "quick": {"domains": "digits", "scale_rows": "10000,20000", "baseline_rows": 10000},
         "smoke": {"domains": "digits", "scale_rows": "3000", "baseline_rows": 3000, "per_class": 12}}


def build(domain: str, work: Path, per_class: int | None, operations: tuple[str, ...] | None = None) -> Path:
    """The planted set of `domain` under work (reused when already there): its manifest."""
    from _domains import DOMAINS
    import _planted

    base = work / domain / "base"
    if not base.exists():
        if domain == "digits":
            from _domains import write_digits

            write_digits(base, smoothing=True, per_class=per_class)
        else:
            DOMAINS[domain](base, per_class)
    name = "planted-all4" if operations else "planted"
    planted = work / domain / name
    if not (planted / "truth.json").exists():
        _planted.plant(base, planted, operations=operations)
    return planted / "manifest.csv"


def _pixels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        a = np.asarray(im.convert("L").resize((PIXEL_SIDE, PIXEL_SIDE), Image.BILINEAR), dtype=np.float64).ravel()
    a -= a.mean()
    return a / (np.linalg.norm(a) or 1.0)


def _cross_pairs(diagnosis, truth: dict, root: Path) -> list[tuple]:
    """te doctor's near-duplicate pairs across splits: (cosine, verdict, path, path, signature cosine or None,
    aligned score or None), the verdict "planted", "natural" (the same picture by its pixels, already in the base
    set) or "wrong"."""
    rows = diagnosis.rows
    planted = {frozenset((t["copy"], t["source"])) for t in truth["near"]}
    copies = {t["copy"] for t in truth["near"]}
    pixel_cache: dict[str, np.ndarray] = {}

    def same_picture(a: str, b: str) -> bool:
        for p in (a, b):
            if p not in pixel_cache:
                pixel_cache[p] = _pixels(root / p)
        return float(pixel_cache[a] @ pixel_cache[b]) >= PIXEL_SAME

    sources = {t["copy"]: t["source"] for t in truth["near"]}
    cross = []
    for p, kind in zip(diagnosis.pairs, diagnosis.kinds):
        if kind.startswith("within"):
            continue
        a, b = rows.paths[rows.records_of[p.a][0]], rows.paths[rows.records_of[p.b][0]]
        if frozenset((a, b)) in planted:
            verdict = "planted"
        elif a in copies and same_picture(sources[a], b) or b in copies and same_picture(sources[b], a):
            verdict = "planted"  # the copy beside a pixel-identical twin of its source
        elif a not in copies and b not in copies and same_picture(a, b):
            verdict = "natural"
        else:
            verdict = "wrong"
        cross.append((p.cosine, verdict, a, b, p.signature, p.aligned))
    return cross


def _near_score(found: list[tuple], copies: set[str]) -> dict:
    """Precision and recall of the cross-split pairs `found` (see the module docstring)."""
    right = sum(1 for c in found if c[1] != "wrong")
    caught = {c[2] for c in found} | {c[3] for c in found}
    recall = sum(1 for c in copies if c in caught) / max(1, len(copies))
    return {"pairs": len(found), "right": right, "natural": sum(1 for c in found if c[1] == "natural"),
            "precision": right / len(found) if found else None, "recall": recall}


def rule_sweep(diagnosis, truth: dict, root: Path, kind: str = "signature") -> dict[tuple[float, float], dict]:
    """The signature rule's (`kind` "signature") or the aligned rule's ("aligned") precision and recall at each
    (floor, threshold) of its grids, from one te doctor run at their lowest values."""
    cross = _cross_pairs(diagnosis, truth, root)
    copies = {t["copy"] for t in truth["near"]}
    floors, grid, at = RULES[kind]
    return {(floor, tau): _near_score([c for c in cross if c[0] >= floor and c[at] >= tau], copies)
            for floor in floors for tau in grid}


def score(diagnosis, truth: dict, root: Path) -> dict:
    """Precision and recall of every finding against `truth` (see the module docstring), per threshold."""
    rows = diagnosis.rows
    copies = {t["copy"] for t in truth["near"]}
    cross = _cross_pairs(diagnosis, truth, root)
    near = {tau: _near_score([c for c in cross if c[0] >= tau], copies) for tau in GRID}
    # exact copies: planted copies grouped with their source
    groups = {rows.paths[r]: {rows.paths[x] for x in g.records} for g in diagnosis.exact for r in g.records}
    exact_found = sum(1 for t in truth["exact"] if t["source"] in groups.get(t["copy"], ()))
    conflict_found = sum(1 for t in truth["conflicting"] if t["source"] in groups.get(t["copy"], ())
                         and any(g.conflicting for g in diagnosis.exact if t["copy"] in {rows.paths[x] for x in g.records}))
    # label errors: the flipped records among te doctor's ranking (cleanlab's flagged set, then the rest by
    # the probability the probe gives the label)
    lab = diagnosis.labels
    flipped = {t["path"] for t in truth["flipped"]}
    flagged = [rows.paths[lab.pool[i]] for i in lab.flagged.tolist()]
    k = len(flipped)
    at_k = _recall_at_k(rows, lab, flipped)
    hits = sum(1 for p in flagged if p in flipped)
    # test accuracy with and without the leaked test images, at te doctor's default threshold (te doctor ran at LOW)
    from transfer_engine.core.configs.doctor import NEAR_DUPLICATE_COSINE
    from transfer_engine.doctor.impact import accuracy_with_and_without

    leaked = set(diagnosis.leaked_exact) | {r for r, (_, c) in diagnosis.leaked_near.items()
                                             if c >= NEAR_DUPLICATE_COSINE}
    impact = (accuracy_with_and_without(rows, lab.test, lab.test_probabilities.argmax(1), leaked)
              if lab.test_probabilities is not None else None)
    return {"near": near, "exact_recall": exact_found / max(1, len(truth["exact"])),
            "conflict_recall": conflict_found / max(1, len(truth["conflicting"])),
            "label_recall_at_k": at_k, "planted_flips": k, "flagged": len(flagged),
            "flagged_precision": hits / len(flagged) if flagged else None, "flagged_recall": hits / max(1, k),
            "probe_accuracy": lab.accuracy, "impact": impact}


def _recall_at_k(rows, lab, flipped: set[str]) -> float:
    """The share of the flipped records among the first K (K = len(flipped)) of te doctor's ranking:
    cleanlab's flagged set, then the rest by the probability given their label."""
    flagged = [rows.paths[lab.pool[i]] for i in lab.flagged.tolist()]
    seen = set(flagged)
    rest = [rows.paths[lab.pool[i]] for i in np.argsort(lab.quality, kind="stable").tolist()
            if rows.paths[lab.pool[i]] not in seen]
    return sum(1 for p in (flagged + rest)[:len(flipped)] if p in flipped) / max(1, len(flipped))


def redrawn_flips(rows, truth: dict, draws: int = FLIP_DRAWS) -> dict:
    """Label-error recall at the planted count over `draws` fresh draws of the flipped labels, te doctor's rule
    (the probe's probabilities averaged with its neighbours' vote) beside the probe alone. Each draw follows
    _planted.py's rule on the cached features: as many train+val labels as were planted, none of a planted
    copy or its source, each moved to another class at random (seeded). One draw of a few dozen flips moves
    the recall by 1/K a flip; the rule was chosen on the mean over the draws on the tuning sets."""
    import dataclasses
    import random

    from transfer_engine.doctor import label_issues, neighbours

    pool = rows.in_split("train", "val")
    classes = {c: i for i, c in enumerate(rows.class_names)}
    clean = rows.labels.copy()
    where = {rows.paths[r]: r for r in pool.tolist()}
    for t in truth["flipped"]:
        clean[where[t["path"]]] = classes[t["label"]]
    planted = {t[side] for kind in ("near", "exact", "conflicting") for t in truth[kind] for side in ("copy", "source")}
    candidates = [r for r in pool.tolist() if rows.paths[r] not in planted]
    found = neighbours.nearest(rows.features)
    out: dict[str, list[float]] = {"with_neighbours": [], "probe_alone": []}
    for draw in range(draws):
        rng = random.Random(FLIP_DRAW_SEED + draw)
        labels = clean.copy()
        chosen = sorted(rng.sample(candidates, len(truth["flipped"])))
        for r in chosen:
            labels[r] = rng.choice([c for c in range(rows.num_classes) if c != clean[r]])
        drawn = dataclasses.replace(rows, labels=labels)
        flipped = {rows.paths[r] for r in chosen}
        for name, graph in (("with_neighbours", found), ("probe_alone", None)):
            lab = label_issues.find_label_issues(drawn, head="linear", folds=5, seed=0, neighbours=graph)
            out[name].append(_recall_at_k(drawn, lab, flipped))
    return {name: {"mean": float(np.mean(v)), "sd": float(np.std(v)), "draws": v} for name, v in out.items()}


def planted_run(domain: str, work: Path, per_class: int | None, operations=None) -> dict:
    from transfer_engine.doctor import doctor
    from transfer_engine.extract import extract

    manifest = build(domain, work, per_class, operations)
    cache = work / "cache"
    name = f"{domain}-{manifest.parent.name}"
    t0 = time.perf_counter()
    extract(BACKBONE, str(manifest), cache, name=name, progress=False, replace=True)
    extracted = time.perf_counter() - t0
    t0 = time.perf_counter()
    extract(SIGNATURE, str(manifest), cache, name=name, progress=False)
    signature_extracted = time.perf_counter() - t0
    t1 = time.perf_counter()
    d = doctor(cache, dataset=name, threshold=LOW, signature=False, out=work / "doctor" / name, sheets=False,
               progress=False)
    seconds = time.perf_counter() - t1
    # the signature rule at the grids' lowest values (the probe's folds do not matter to the pairs)
    signed = doctor(cache, dataset=name, signature_threshold=SIGNATURE_GRID[0], signature_floor=FLOOR_GRID[0],
                    aligned=False, folds=2, out=work / "doctor" / f"{name}-signature", sheets=False, progress=False)
    assert signed.rule["by"] == "signature", signed.rule
    t0 = time.perf_counter()
    extract(THUMBNAIL, str(manifest), cache, name=name, progress=False)
    thumbnail_extracted = time.perf_counter() - t0
    t0 = time.perf_counter()
    aligned = doctor(cache, dataset=name, aligned_threshold=ALIGNED_GRID[0], aligned_floor=ALIGNED_FLOOR_GRID[0],
                     folds=2, out=work / "doctor" / f"{name}-aligned", sheets=False, progress=False)
    aligned_seconds = time.perf_counter() - t0
    assert aligned.rule["by"] == "aligned", aligned.rule
    truth = json.loads((manifest.parent / "truth.json").read_text())
    result = score(d, truth, manifest.parent)
    if operations is None:
        from transfer_engine.doctor.rows import load_rows

        rows = load_rows(str(cache), dataset=name, backbone=None, space=d.rows.space_id, say=lambda line: None)
        try:  # doctor() has closed its rows' cache: the features are read again
            result["redrawn_flips"] = redrawn_flips(rows, truth)
        finally:
            rows.close()
    result.update(images=truth["images"], planted_near=len(truth["near"]), extract_seconds=extracted,
                  signature_extract_seconds=signature_extracted, doctor_seconds=seconds, domain=domain,
                  signature=rule_sweep(signed, truth, manifest.parent),
                  aligned=rule_sweep(aligned, truth, manifest.parent, "aligned"),
                  thumbnail_extract_seconds=thumbnail_extracted, aligned_doctor_seconds=aligned_seconds)
    print(f"{name}: {truth['images']} images, extract {extracted:.1f} s, signature {signature_extracted:.1f} s, "
          f"thumbnails {thumbnail_extracted:.1f} s, doctor {seconds:.1f} s ({aligned_seconds:.1f} s lining up "
          f"thumbnails); exact {result['exact_recall']:.2f}, "
          f"labels@K {result['label_recall_at_k']:.2f}", file=sys.stderr, flush=True)
    return result


def choose_threshold(results: dict[str, dict]) -> tuple[float, list[dict]]:
    """The grid value with the highest mean F1 of the near-duplicate findings over the tuning sets."""
    table = []
    for tau in GRID:
        f1s = []
        for domain in TUNING:
            if domain not in results:
                continue
            n = results[domain]["near"][tau]
            p, r = n["precision"] or 0.0, n["recall"]
            f1s.append(2 * p * r / (p + r) if p + r else 0.0)
        table.append({"threshold": tau, "mean_f1": float(np.mean(f1s)) if f1s else 0.0,
                      **{d: results[d]["near"][tau] for d in results}})
    best = max(table, key=lambda row: row["mean_f1"])
    return best["threshold"], table


def choose_rule(results: dict[str, dict], kind: str = "signature") -> tuple[tuple[float, float], list[dict]]:
    """The (floor, threshold) of the signature rule (`kind` "signature") or the aligned rule ("aligned") with the
    highest mean F1 of the near-duplicate findings over the tuning sets, and the whole sweep (each row's threshold
    under "signature_threshold" or "aligned_threshold")."""
    floors, grid, _ = RULES[kind]
    table = []
    for floor in floors:
        for tau in grid:
            f1s = []
            for domain in TUNING:
                if domain not in results:
                    continue
                n = results[domain][kind][(floor, tau)]
                p, r = n["precision"] or 0.0, n["recall"]
                f1s.append(2 * p * r / (p + r) if p + r else 0.0)
            table.append({"floor": floor, f"{kind}_threshold": tau, "mean_f1": float(np.mean(f1s)) if f1s else 0.0,
                          **{d: results[d][kind][(floor, tau)] for d in results}})
    best = max(table, key=lambda row: row["mean_f1"])
    return (best["floor"], best[f"{kind}_threshold"]), table


def _print_sweep(table: list[dict], kind: str, results: dict) -> None:
    for row in table:
        print(f"  {kind} >= {row[f'{kind}_threshold']:.3f}, features >= {row['floor']:.2f}: mean F1 "
              f"{row['mean_f1']:.3f}: " + ", ".join(
                  f"{d} P {row[d]['precision'] or 0:.2f} R {row[d]['recall']:.2f} ({row[d]['pairs']} pairs, "
                  f"{row[d]['natural']} natural)" for d in results), file=sys.stderr)


def at_rule(result: dict, kind: str, rule: tuple[float, float]) -> dict:
    """The precision and recall of the signature rule (`kind` "signature") or the aligned rule ("aligned") at the
    grid point nearest to `rule` (floor, threshold)."""
    floors, grid, _ = RULES[kind]
    return result[kind][(min(floors, key=lambda t: abs(t - rule[0])), min(grid, key=lambda t: abs(t - rule[1])))]


def _rule_rows(result: dict, label: str, kind: str, rule: tuple[float, float], evidence: str) -> list[dict]:
    g = at_rule(result, kind, rule)
    note = (f"with {evidence} >= {rule[1]} and features >= {rule[0]}; {g['natural']} natural pairs counted right")
    return [result_row(f"near duplicates precision with {evidence}, {label}", g["precision"] or 0.0, 1.0, "share",
                       g["precision"] or 0.0, ">= 0.9", note),
            result_row(f"near duplicates recall with {evidence}, {label}", g["recall"], 1.0, "share", g["recall"],
                       ">= 0.9", note)]


# -- scale ------------------------------------------------------------------------------------------------------
# The child's own peak: VmHWM, the high-water mark of its memory since exec. ru_maxrss is not that on Linux: a
# process started by exec inherits its parent's peak at the fork, so behind this benchmark's parent (2.2 GiB
# after the planted sets) every size read the same 2,242 MiB.
SCALE_CHILD = r"""
import json, resource, sys, time
import numpy as np
from transfer_engine.doctor import doctor
start = time.perf_counter()
d = doctor(sys.argv[1], out=sys.argv[2], sheets=False, progress=False)
try:
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
except OSError:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": time.perf_counter() - start, "peak_kib": peak,
                  "method": d.method, "pairs": len(d.pairs), "flagged": len(d.labels.flagged)}))
"""


COPIES = 0.01  # of the synthetic rows: a near copy of another row (cosine about 0.99), for the search's recall


def synthetic_cache(root: Path, rows: int, dim: int = 1280, classes: int = 20, seed: int = 0) -> None:
    """`rows` synthetic non-negative features of `classes` classes (70/15/15 splits) in an int8 cache; COPIES
    of them are near copies of the row before them."""
    import torch

    from transfer_engine.cache import FeatureCache, FeatureSpace, Record

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim)).astype(np.float32)
    with FeatureCache.open(root) as cache:
        space = cache.space(FeatureSpace(backbone="synthetic", weights_digest="0" * 64, transform={}, dim=dim,
                                         stored="int8"))
        records = []
        for start in range(0, rows, 10000):
            n = min(10000, rows - start)
            labels = rng.integers(0, classes, n)
            x = np.maximum(centres[labels] + 1.5 * rng.standard_normal((n, dim)).astype(np.float32), 0)
            copy = np.flatnonzero(rng.random(n) < COPIES)
            copy = copy[copy > 0]
            x[copy] = np.maximum(x[copy - 1] + 0.1 * rng.standard_normal((len(copy), dim)).astype(np.float32), 0)
            labels[copy] = labels[copy - 1]
            keys = [f"{start + i:064x}" for i in range(n)]
            space.append(keys, torch.from_numpy(x))
            u = rng.random(n)
            records += [Record(f"row/{start + i}", k, int(y), "test" if v < 0.15 else "val" if v < 0.3 else "train")
                        for i, (k, y, v) in enumerate(zip(keys, labels, u))]
        cache.put_dataset("synthetic", records, [str(c) for c in range(classes)])


def scale_run(n: int, work: Path) -> dict:
    root = work / f"scale-{n}"
    if not (root / "cache").exists():
        synthetic_cache(root / "cache", n)
    proc = subprocess.run([sys.executable, "-c", SCALE_CHILD, str(root / "cache"), str(root / "out")],
                          capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"scale {n}: {result}", file=sys.stderr, flush=True)
    return result


def baseline_search(n: int, work: Path) -> dict:
    """te doctor's neighbour search vs the N x N NumPy cosine matrix, on the same synthetic rows."""
    from transfer_engine.doctor.neighbours import nearest
    from transfer_engine.doctor.rows import load_rows

    root = work / f"scale-{n}"
    if not (root / "cache").exists():
        synthetic_cache(root / "cache", n)
    rows = load_rows(str(root / "cache"), dataset=None, backbone=None, space=None, say=lambda line: None)
    x = np.asarray(rows.features)  # held whole: the baseline's way
    rows.close()
    t0 = time.perf_counter()
    exact = nearest(x)
    te_seconds = time.perf_counter() - t0
    t2 = time.perf_counter()
    approximate = nearest(x, exact_max_rows=0)  # the FAISS way, on the same rows
    faiss_seconds = time.perf_counter() - t2
    pairs = {(a, b) for a, row in enumerate(exact.index.tolist()) for b, c in zip(row, exact.cosine[a]) if c >= 0.95}
    found = {(a, b) for a, row in enumerate(approximate.index.tolist()) for b, c in zip(row, approximate.cosine[a])
             if c >= 0.95}
    t1 = time.perf_counter()
    sim = x @ x.T                                  # the baseline: every pair, then the top 10 of each row
    np.fill_diagonal(sim, -np.inf)
    np.argpartition(-sim, 10, axis=1)[:, :10]
    plain_seconds = time.perf_counter() - t1
    return {"te": te_seconds, "plain": plain_seconds, "faiss": faiss_seconds, "matrix_bytes": sim.nbytes,
            "close_pairs": len(pairs), "faiss_pair_recall": len(pairs & found) / max(1, len(pairs))}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_suite_options(parser, "digits only, 10,000 and 20,000 synthetic rows")
    parser.add_argument("--domains", default=None)
    parser.add_argument("--scale-rows", default=None)
    parser.add_argument("--baseline-rows", type=int, default=None)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--work", default=None, help="where the sets and caches are built (default: a temporary folder)")
    parser.add_argument("--skip-scale", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    suite = pick_sizes(args, **SIZES)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="te-bench-doctor-"))
    from transfer_engine.core.configs.doctor import NEAR_DUPLICATE_COSINE as DEFAULT
    from transfer_engine.core.configs.doctor import SIGNATURE_COSINE as SIGNATURE_DEFAULT
    from transfer_engine.core.configs.doctor import ALIGNED_FLOOR, SIGNATURE_FLOOR
    from transfer_engine.core.configs.doctor import ALIGNED_SCORE as ALIGNED_DEFAULT

    domains = [d for d in args.domains.split(",") if d]
    from _domains import MissingData

    results = {}
    for d in domains:
        try:
            results[d] = planted_run(d, work, args.per_class)
        except MissingData as e:  # a set whose Debian packages are not installed: skipped, saying which
            print(f"{d}: skipped: {e}", file=sys.stderr)
    domains = list(results)
    if not domains:
        print("no data set could be built", file=sys.stderr)
        return 1
    stress = planted_run(domains[0], work, args.per_class, operations=("crop", "resize", "colour", "re-encode"))
    chosen, sweep = choose_threshold(results)
    for row in sweep:
        print(f"  {row['threshold']:.3f} mean F1 {row['mean_f1']:.3f}: " + ", ".join(
            f"{d} P {row[d]['precision'] or 0:.2f} R {row[d]['recall']:.2f} ({row[d]['pairs']} pairs, "
            f"{row[d]['natural']} natural)" for d in results), file=sys.stderr)
    print(f"threshold with the best mean F1 over the tuning sets: {chosen} (te doctor's default: {DEFAULT})",
          file=sys.stderr)
    best_rule, signature_table = choose_rule(results)
    _print_sweep(signature_table, "signature", results)
    rule = (SIGNATURE_FLOOR, SIGNATURE_DEFAULT)
    print(f"signature rule with the best mean F1 over the tuning sets: features >= {best_rule[0]}, signature >= "
          f"{best_rule[1]} (te doctor's default: features >= {rule[0]}, signature >= {rule[1]})", file=sys.stderr)
    best_aligned, aligned_table = choose_rule(results, "aligned")
    _print_sweep(aligned_table, "aligned", results)
    lined_up = (ALIGNED_FLOOR, ALIGNED_DEFAULT)
    print(f"aligned rule with the best mean F1 over the tuning sets: features >= {best_aligned[0]}, aligned >= "
          f"{best_aligned[1]} (te doctor's default: features >= {lined_up[0]}, aligned >= {lined_up[1]})",
          file=sys.stderr)
    rows = []
    for domain, r in results.items():
        held = " (held out)" if domain in HELD_OUT else ""
        n = r["near"][min(GRID, key=lambda t: abs(t - DEFAULT))]
        note = f"{r['images']} images, {r['planted_near']} planted near copies, {n['natural']} natural pairs counted right"
        rows.append(result_row(f"near duplicates precision, {domain}{held}", n["precision"] or 0.0, 1.0, "share",
                               n["precision"] or 0.0, ">= 0.9", note))
        rows.append(result_row(f"near duplicates recall, {domain}{held}", n["recall"], 1.0, "share", n["recall"],
                               ">= 0.9", note))
        rows += _rule_rows(r, domain + held, "signature", rule, "the copy signature")
        rows += _rule_rows(r, domain + held, "aligned", lined_up, "the copy thumbnails")
        rows.append(result_row(f"exact duplicates found, {domain}{held}", r["exact_recall"], 1.0, "share",
                               r["exact_recall"], ">= 1.0"))
        rows.append(result_row(f"label errors recall at the planted count, {domain}{held}", r["label_recall_at_k"],
                               1.0, "share", r["label_recall_at_k"], ">= 0.7",
                               f"{r['planted_flips']} flipped; cleanlab flagged {r['flagged']} (precision "
                               f"{r['flagged_precision'] or 0:.2f}, recall {r['flagged_recall']:.2f}); probe "
                               f"{r['probe_accuracy']:.3f} out-of-fold"))
        f = r["redrawn_flips"]
        rows.append(result_row(f"label errors recall at the planted count, mean of {FLIP_DRAWS} draws of the flips, "
                               f"{domain}{held}", f["with_neighbours"]["mean"], 1.0, "share",
                               f["with_neighbours"]["mean"], ">= 0.7",
                               f"sd {f['with_neighbours']['sd']:.3f}; the probe alone "
                               f"{f['probe_alone']['mean']:.3f} (sd {f['probe_alone']['sd']:.3f})"))
    s = stress["near"][min(GRID, key=lambda t: abs(t - DEFAULT))]
    rows.append(result_row(f"near duplicates recall, {domains[0]}, every copy cropped+resized+colour-shifted+re-encoded "
                           "(informational)", s["recall"], 1.0, "share", s["recall"], None))
    for kind, chosen_rule, evidence in (("signature", rule, "the copy signature"),
                                        ("aligned", lined_up, "the copy thumbnails")):
        g = at_rule(stress, kind, chosen_rule)
        rows.append(result_row(f"near duplicates recall with {evidence}, {domains[0]}, every copy "
                               "cropped+resized+colour-shifted+re-encoded (informational)", g["recall"], 1.0, "share",
                               g["recall"], None))
    scale = {}
    if not args.skip_scale:
        sizes = [int(v) for v in args.scale_rows.split(",") if v]
        scale = {n: scale_run(n, work) for n in sizes}
        for n, r in scale.items():
            rows.append(result_row(f"te doctor end to end, {n:,} rows x 1280 (provisional: timed beside other work)",
                                   r["seconds"], 60.0, "s", 60.0 / r["seconds"], ">= 1x",
                                   f"peak {r['peak_kib'] / 1024:.0f} MiB ({r['peak_kib'] * 1024 / n:.0f} bytes a row); "
                                   f"{r['method']}"))
        base = baseline_search(args.baseline_rows, work)
        rows.append(result_row(f"nearest neighbours of {args.baseline_rows:,} rows: te doctor vs a NumPy N x N cosine "
                               "matrix (provisional)", base["te"], base["plain"], "s", base["plain"] / base["te"], None,
                               f"the matrix takes {base['matrix_bytes'] / 2**20:.0f} MiB"))
        rows.append(result_row(f"nearest neighbours of {args.baseline_rows:,} rows: the FAISS way vs scikit-learn's "
                               "exact search (provisional; where te doctor switches, docs/doctor.md)", base["faiss"],
                               base["te"], "s", base["te"] / base["faiss"], None,
                               f"the FAISS way finds {base['faiss_pair_recall']:.3f} of the {base['close_pairs']} "
                               "pairs at cosine >= 0.95 that the exact search finds"))
    print_rows(rows)
    if args.json:
        write_results(args.json, "doctor", rows, {
            "suite": suite, "backbone": BACKBONE, "default_threshold": DEFAULT, "best_tuning_threshold": chosen,
            "sweep": sweep, "signature_rule": {"floor": rule[0], "signature_threshold": rule[1]},
            "best_tuning_signature_rule": {"floor": best_rule[0], "signature_threshold": best_rule[1]},
            "signature_sweep": signature_table,
            "aligned_rule": {"floor": lined_up[0], "aligned_threshold": lined_up[1]},
            "best_tuning_aligned_rule": {"floor": best_aligned[0], "aligned_threshold": best_aligned[1]},
            "aligned_sweep": aligned_table,
            "results": {d: {k: v for k, v in r.items() if k not in ("near", "signature", "aligned")}
                        for d, r in results.items()},
            "stress": {k: v for k, v in stress.items() if k not in ("near", "signature", "aligned")}, "scale": scale,
            "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "threads": os.environ.get("OMP_NUM_THREADS")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
