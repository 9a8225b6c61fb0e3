"""`extract()`: a data set through a frozen backbone into the feature cache, incrementally.

The order of work is what makes re-runs cheap: every file is hashed first (bytes only), the cache is
asked which keys the feature space lacks, and only those are decoded, transformed and run through the
model. Each batch is appended (quantized by the C++ op) as soon as it is computed, so a killed run
keeps everything up to its last batch and the same command resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from transfer_engine.data.sources import DataSource, Sample, content_key, derived_split, open_source
from transfer_engine.errors import TEError, UsageError
from transfer_engine.extract import distributed as dist
from transfer_engine.extract.pipeline import FeatureExtractor, Item
from transfer_engine.extract.precision import choose_precision
from transfer_engine.extract.progress import Progress

STORES = ("int8", "fp16", "fp32")
CHUNK = 512  # keys asked of the cache at once


@dataclass
class ExtractSummary:
    """What `te extract --json` prints (the keys other tools rely on come first)."""

    dataset: str
    backbone: str
    space: str
    total: int
    extracted: int
    reused: int
    failed: list[dict]
    seconds: float
    images_per_second: float
    precision: str = "fp32"
    precision_reason: str = ""
    store: str = "int8"
    device: str = "cpu"
    weights: str = ""
    cache: str = ""
    classes: int = 0
    splits: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def default_dataset_name(source: DataSource, data: str) -> str:
    if data.startswith("builtin:"):
        return data.split(":", 1)[1]
    path = Path(data).expanduser()
    return path.stem if path.is_file() else path.resolve().name


def resolve_device(device: str) -> torch.device:
    """"auto" picks CUDA when a GPU is visible; "cuda" without one is a usage error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False); use --device cpu")
    return torch.device(device)


def extract(backbone: str, data: str, cache: str | os.PathLike, *, weights: str = "DEFAULT",
            name: str | None = None, batch_size: int | None = None, workers: int | None = None,
            device: str = "auto", precision: str = "auto", store: str = "int8", limit: int | None = None,
            strict: bool = False, seed: int = 0, progress: bool = True) -> ExtractSummary:
    """Extract features of `data` with `backbone` into the cache at `cache`.

    Args:
        backbone: a registered backbone name.
        data: a folder, a .csv/.jsonl manifest, or builtin:NAME.
        cache: the cache directory (created when missing).
        weights: the backbone's weights ("DEFAULT", a name, "none", or a state-dict path).
        name: the data set's name in the cache (default: the folder/manifest name).
        batch_size: images per forward pass (default: 32 on CPU, 128 on CUDA).
        workers: decode/transform threads (default: the number of CPUs, at most 8).
        device: "auto", "cpu" or "cuda".
        precision: "auto", "fp32", "bf16" or "fp16" compute; auto picks the fastest that keeps
            features within the accuracy bound (see transfer_engine.extract.precision).
        store: stored dtype of the rows: "int8" (per-row scale), "fp16" or "fp32".
        limit: use only the first N images of the data set.
        strict: a file that cannot be read or decoded is an error (exit 1) instead of a warning.
        seed: seed of a random initialization (weights "none").
        progress: show progress on stderr.

    Returns:
        The `ExtractSummary`.

    Raises:
        UsageError: bad --data, an empty data set, an unknown backbone or option value.
        TEError: weights unavailable, or (strict) files that failed.
    """
    from transfer_engine.backbones import create_backbone
    from transfer_engine.cache import FeatureCache, FeatureSpace, Record

    if store not in STORES:
        raise UsageError(f"--store must be one of {', '.join(STORES)}, got {store!r}")
    if limit is not None and limit <= 0:
        raise UsageError(f"--limit must be positive, got {limit}")
    start = time.perf_counter()
    source = open_source(data)
    dataset = name or default_dataset_name(source, data)
    rank, world = dist.rank_and_world()
    samples = list(_limited(source.samples(), limit))
    if not samples:
        raise UsageError(f"--data {data}: the data set holds no images")
    mine = list(enumerate(samples))[rank::world]  # this rank's share; rank 0 writes the data set record

    target = resolve_device(device)
    if target.type == "cuda" and world > 1:
        target = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    bb = create_backbone(backbone, weights=weights, seed=seed)
    cache_obj = FeatureCache.open(cache)
    try:
        chosen, reason = choose_precision(precision, bb, target, cache_obj, source, samples)
        space = cache_obj.space(FeatureSpace.of_backbone(bb, stored=store, precision=chosen))
        batch = batch_size or (128 if target.type == "cuda" else 32)
        threads = workers or min(8, os.cpu_count() or 1)
        meter = Progress(len(mine), enabled=progress and rank == 0, label=f"extract {bb.name}")
        records: list[tuple] = []
        failed: list[dict] = []
        counts = {"reused": 0}
        items = _pending(source, mine, space, records, failed, counts, meter)
        extracted = 0
        extractor = FeatureExtractor(bb, target, chosen, batch, threads)
        for out in extractor.run(items):
            failed.extend(out.failed)
            if out.keys:
                space.append(out.keys, out.features)
                extracted += len(out.keys)
            meter.update(done=len(out.keys), failed=len(out.failed))
        meter.close()
        failed_paths = {f["path"] for f in failed}
        records = [r for r in records if r[1] not in failed_paths]
        all_records, all_failed, extracted, reused = dist.collect(records, failed, extracted, counts["reused"])
        all_records = [r[1:] for r in all_records]  # drop the ordering index
        if rank == 0:
            cache_obj.put_dataset(dataset, [Record(*r) for r in all_records], source.class_names)
            cache_obj.set_provenance(space.id, {"backbone": bb.name, "weights": bb.weights, "seed": bb.seed,
                                                "plugin": bb.plugin, "data": data, "dataset": dataset})
        dist.barrier()
        seconds = time.perf_counter() - start
        summary = ExtractSummary(
            dataset=dataset, backbone=bb.name, space=space.id, total=len(samples), extracted=extracted,
            reused=reused, failed=all_failed, seconds=round(seconds, 3),
            images_per_second=round(extracted / seconds, 2) if seconds > 0 else 0.0,
            precision=chosen, precision_reason=reason, store=store, device=str(target), weights=bb.weights,
            cache=str(cache_obj.root), classes=len(source.class_names),
            splits=_split_counts(all_records),
        )
    finally:
        cache_obj.close()
    if strict and summary.failed:
        first = summary.failed[0]
        raise TEError(f"{len(summary.failed)} file(s) could not be read or decoded (--strict), first: "
                      f"{first['path']}: {first['reason']}")
    return summary


def _limited(samples: Iterator[Sample], limit: int | None) -> Iterator[Sample]:
    for i, sample in enumerate(samples):
        if limit is not None and i >= limit:
            return
        yield sample


def _pending(source: DataSource, samples: list[tuple[int, Sample]], space, records: list, failed: list,
             counts: dict, meter: Progress) -> Iterator[Item]:
    """Hash each file, record it, and yield an `Item` only for keys the space lacks (once per key)."""
    queued: set[str] = set()
    for lo in range(0, len(samples), CHUNK):
        chunk = samples[lo: lo + CHUNK]
        keyed: list[tuple[Sample, str]] = []
        for index, sample in chunk:
            try:
                key = content_key(source.read_bytes(sample))
            except OSError as exc:
                failed.append({"path": sample.path, "reason": f"{type(exc).__name__}: {exc.strerror or exc}"})
                meter.update(failed=1)
                continue
            keyed.append((sample, key))
            records.append((index, sample.path, key, sample.label, sample.split or derived_split(key)))
        present = space.contains([k for _, k in keyed]) if keyed else []
        for (sample, key), have in zip(keyed, present):
            if have or key in queued:
                counts["reused"] += 1
                meter.update(reused=1)
                continue
            queued.add(key)
            yield Item(key, sample.path, _loader(source, sample, key))


def _loader(source: DataSource, sample: Sample, key: str) -> Callable:
    def load():
        data = source.read_bytes(sample)
        if content_key(data) != key:
            raise OSError("the file changed while te was extracting it")
        return source.decode(sample, data)

    return load


def _split_counts(records: list[tuple]) -> dict:
    counts: dict[str, int] = {}
    for r in records:
        counts[r[3]] = counts.get(r[3], 0) + 1
    return dict(sorted(counts.items()))
