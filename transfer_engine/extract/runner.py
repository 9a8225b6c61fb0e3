"""`extract()`: a data set through a frozen backbone into the feature cache, incrementally.

The order of work is what makes re-runs cheap: every file is hashed first (bytes only), the cache is
asked which keys the feature space lacks, and only those are decoded, transformed and run through the
model. Each batch is appended (quantized by the C++ op) as soon as it is computed, so a killed run
keeps everything up to its last batch and the same command resumes where it stopped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, NamedTuple

import torch

from transfer_engine.backbones.calibration import CALIBRATION_IMAGES, calibration_images, preprocessed
from transfer_engine.cache import identity
from transfer_engine.core import distributed as dist
from transfer_engine.core.configs import ExtractConfig
from transfer_engine.core.paths import display_path
from transfer_engine.core.progress import Progress
from transfer_engine.core.runtime import device_of_this_rank, resolve_device, torch_threads
from transfer_engine.data.sources import (DataSource, Sample, content_key, default_dataset_name, derived_split, first_skip,
                                          open_source, recorded_data)
from transfer_engine.errors import PluginError, TEError, UsageError
from transfer_engine.extract import nodes, streamed
from transfer_engine.extract.ledger import PartLedger
from transfer_engine.extract.distributed import records_in_order
from transfer_engine.extract.pipeline import FeatureExtractor, Item
from transfer_engine.extract.backend import adopt, choose
from transfer_engine.extract.resampler import ResamplerChoice, choose_resampler, with_resampler
from transfer_engine.extract.progress import Progress as Meter
from transfer_engine.extract.spool import RecordSpool
from transfer_engine.extract.stages import StageClock

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
    backend: str = "torch"
    backend_measured: dict = field(default_factory=dict)
    store: str = "int8"
    resampler: str = "pil"
    resampler_reason: str = ""
    stages: dict = field(default_factory=dict)
    device: str = "cpu"
    weights: str = ""
    cache: str = ""
    classes: int = 0
    splits: dict = field(default_factory=dict)
    parts: dict = field(default_factory=dict)  # tar shards / tables: total, read, skipped_finished

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def extract(backbone: "str | ExtractConfig", data: str | None = None, cache: str | os.PathLike | None = None, *,
            progress: Progress = True, **fields: Any) -> ExtractSummary:
    """Extract the features of a data set with a backbone into a feature cache.

    Args:
        backbone: a registered backbone name, or a whole `core.configs.ExtractConfig` (whose fields' help
            describes every option: weights, name, replace, batch_size, workers, device, precision,
            backend, store, resampler, limit, strict, seed, follow_symlinks, node_cache).
        data: a folder, a .csv/.jsonl manifest, or builtin:NAME (with a backbone name).
        cache: the cache directory, created when missing (with a backbone name).
        progress: the progress line: True on stderr, False none, a function is handed each line
            (`core.progress`).
        fields: the config's fields as keywords (they override those of a config given).

    Returns:
        The `ExtractSummary`.

    Raises:
        UsageError: bad --data, an empty data set, an unknown backbone or option value.
        TEError: weights unavailable, or (strict) files that failed.
    """
    cfg = (ExtractConfig.of(backbone, **fields) if isinstance(backbone, ExtractConfig)
           else ExtractConfig(backbone=backbone, data=data, cache=cache, **fields))
    from transfer_engine.backbones import create_backbone
    from transfer_engine.cache import FeatureCache, FeatureSpace
    from transfer_engine.cache.lock import read_only_error
    from transfer_engine.cache.store import writable

    start = time.perf_counter()
    clock = StageClock()
    # Join the job first: a rank whose --data or options fail then tells the others, which stop at once.
    rank, world = dist.rank_and_world()
    source = open_source(cfg.data, cfg.follow_symlinks, cfg.label_field)
    streaming = source.streaming  # parts (tar shards, tables): `extract.streamed`
    if cfg.name is not None and display_path(cfg.name) != cfg.name:
        raise UsageError(f"--name {display_path(cfg.name)}: a data set's name must be valid UTF-8 text")
    dataset = cfg.name or default_dataset_name(source, cfg.data)
    layout = nodes.node_layout(world)
    # Count first (a listing, no reads), then stream: the sample list is never held in memory. Parts are
    # not counted (that would read them): their progress line counts up without a total.
    if streaming:
        parts = source.parts()
        if not parts:
            raise UsageError(f"--data {cfg.data}: no part could be read{first_skip(source.skipped())}")
        counted = None
    else:
        counted = sum(1 for _ in _limited(source.samples(), cfg.limit))
        if not counted:
            raise UsageError(f"--data {cfg.data}: the data set holds no images")

    target = device_of_this_rank(resolve_device(cfg.device), world)
    bb = create_backbone(cfg.backbone, weights=cfg.weights, seed=cfg.seed)
    # Across machines, node k >= 1 writes its own delta cache: no index is ever opened from two hosts.
    delta = nodes.delta_path(Path(cfg.cache), cfg.node_cache, layout) if layout.writes_delta else None
    cache_obj = FeatureCache.open(delta or cfg.cache)
    if not writable(cache_obj.root):  # before the backbone is built and any image read: nothing could be kept
        cache_obj.close()
        raise read_only_error(cache_obj.root)
    try:
        # A name is not an identity: another folder's images, or other classes, replace a data set only
        # when asked (before any work; a node's delta holds no data set, so rank 0 decides there).
        # Parts' classes are known once they are read (`data.parts`): checked again before the data set is written.
        known_classes = None if streaming and source.fixed_classes is None else source.class_names
        identity.check_replacement(cache_obj, dataset, recorded_data(cfg.data), known_classes, cfg.replace)
        resized, how = _choose_how(cfg.resampler, cfg.backend, cfg.precision, bb, target, cache_obj, source, cfg.limit, rank, world,
                                   layout)
        chosen = how.precision
        config = FeatureSpace(**bb.space_fields(), stored=cfg.store, precision=chosen)
        present = nodes.shared_present_keys(cache_obj, config.id, rank) if layout.multi else None
        space = _SpaceOnDemand(cache_obj, config, bb, also_present=present if delta else None)
        batch = cfg.batch_size or (128 if target.type == "cuda" else 32)
        threads = cfg.workers or min(8, os.cpu_count() or 1)
        meter = Meter(None if counted is None else len(range(rank, counted, world)),
                      enabled=progress if rank == 0 else False, label=f"extract {bb.name}")
        with RecordSpool(cache_obj.root) as spool:
            run = _Run()
            tensor = bb.preprocess.resampler == "torch"
            if streaming:
                mine_parts = [(i, p) for i, p in enumerate(parts) if i % world == rank]
                ledger = PartLedger(cache_obj.root, space.id)
                part_progress = streamed.PartProgress(ledger, space.contains)
                items = streamed.pending_from_parts(
                    source, mine_parts, ledger, part_progress, space, spool, run, meter, clock, run.parts, run.labels,
                    lambda sample, data: _loader(source, sample, lambda: data, clock, tensor), cfg.limit)
                run.parts.total = len(mine_parts)
            else:
                mine = ((i, s) for i, s in enumerate(_limited(source.samples(), cfg.limit)) if i % world == rank)
                items = _pending(source, mine, space, spool, run, meter, clock, tensor)
            engine = how.engine(bb, target, threads=torch.get_num_threads())
            # On a GPU with the torch resampler, images decode (nvjpeg) and resize there, batch by batch.
            on_gpu = target.type == "cuda" and bb.preprocess.resampler == "torch"
            extractor = FeatureExtractor(bb, target, chosen, batch, threads, engine=engine, clock=clock,
                                         decode_on_device=on_gpu)
            clock.add("setup", time.perf_counter() - start)
            # With onnxruntime on the CPU, torch only resizes, in the decode threads: one intra-op thread each,
            # or every resize spreads over the cores onnxruntime's pool wants (docs/extract.md, "the cores").
            with torch_threads(1 if how.backend == "onnxruntime" and target.type == "cpu" else None):
                for out in extractor.run(items):
                    run.failed.extend(out.failed)
                    run.decode_failures.extend(zip(out.failed_keys, out.failed))
                    if out.keys:
                        with clock.timing("store"):
                            space.append(out.keys, out.features)
                        run.extracted += len(out.keys)
                    run.in_flight.settle(out.keys + out.failed_keys)  # committed (or failed): no longer in flight
                    if streaming:
                        part_progress.settle(out.keys, out.failed_keys, out.failed)
                    meter.update(done=len(out.keys), failed=len(out.failed))
            if streaming:
                part_progress.close()
            meter.close()
            if rank == 0:
                run.failed.extend(source.skipped())  # folders and links the walk left out, with the reason
            space.created()  # nothing extracted (all reused or failed): the data set still names its space
            ranks: list[_Tally] = dist.all_gathered(run.tally(), "waiting for every rank to finish its share")
            total, extracted = sum(t.handled for t in ranks), sum(t.extracted for t in ranks)
            class_names, label_of = source.class_names if not streaming else None, None
            if streaming:  # every rank's labels: the class names, then the check deferred above
                class_names, label_of = _classes_of_parts(source, ranks, cfg.data)
                identity.check_replacement(cache_obj, dataset, recorded_data(cfg.data), class_names, cfg.replace)
            if layout.multi:
                _gather_node_deltas(cache_obj, layout, rank, config.id, present, delta)
            with clock.timing("dataset"):
                if world == 1:
                    outcome = _write_dataset(cache_obj, space, dataset, class_names, spool, ranks, label_of)
                else:
                    outcome = _merge_and_write(cache_obj, space, dataset, class_names, spool, ranks, rank, label_of)
            if rank == 0:
                earlier = cache_obj.provenance(space.id) or {}
                backends = sorted({*earlier.get("backends", []), how.backend})
                provenance = {"backbone": bb.name, "weights": bb.weights, "seed": bb.seed, "plugin": bb.plugin,
                              "data": recorded_data(cfg.data), "dataset": dataset, "backends": backends}
                if cfg.follow_symlinks:
                    provenance["follow_symlinks"] = True
                if cfg.label_field is not None:
                    provenance["label_field"] = cfg.label_field
                cache_obj.set_provenance(space.id, provenance)
                identity.record_source(cache_obj, dataset, recorded_data(cfg.data))
        reused, failed, splits = dist.from_rank0(outcome, "waiting for rank 0 to write the data set")
        failed = [{**f, "path": display_path(f["path"])} for f in failed]  # shown as people read names
        dist.barrier("finishing")
        seconds = time.perf_counter() - start
        summary = ExtractSummary(
            dataset=dataset, backbone=bb.name, space=space.id, total=total, extracted=extracted,
            reused=reused, failed=failed, seconds=round(seconds, 3),
            images_per_second=round(extracted / seconds, 2) if seconds > 0 else 0.0,
            precision=chosen, precision_reason=how.reason, backend=how.backend, backend_measured=how.measured,
            store=cfg.store, resampler=resized.resampler, resampler_reason=resized.reason,
            stages={**clock.seconds(), "wall": round(seconds, 3)}, device=str(target), weights=bb.weights,
            cache=str(cache_obj.root), classes=len(class_names), splits=splits,
            parts=_parts_total(ranks) if streaming else {},
        )
    finally:
        cache_obj.close()
    if cfg.strict and summary.failed:
        first = summary.failed[0]
        raise TEError(f"{len(summary.failed)} file(s) could not be read or decoded (--strict), first: "
                      f"{first['path']}: {first['reason']}")
    return summary


def _choose_how(resampler: str, backend: str, precision: str, bb, target: torch.device, cache, source: DataSource,
                limit: int | None, rank: int, world: int, layout: nodes.NodeLayout) -> tuple[ResamplerChoice, Any]:
    """The resampler decision (it changes `bb`'s preprocessing), then the backend decision on images
    preprocessed that way. Under torchrun rank 0 makes (or finds) them first and the others then find
    them (across machines they take rank 0's, so that every node computes features in the same space)."""
    pairs: list = []

    def calibration() -> list:
        if not pairs and source.streaming:
            pairs.extend(_first_decodable(source, CALIBRATION_IMAGES))
        elif not pairs:
            pairs.extend(calibration_images(source, _limited(source.samples(), limit), CALIBRATION_IMAGES))
        return pairs

    def decide() -> tuple[ResamplerChoice, Any]:
        resized = choose_resampler(resampler, bb, cache, calibration, source.decode)
        with_resampler(bb, resized.resampler)
        batch = resized.batch  # measured just now: the same images, preprocessed as the run will
        how = choose(backend, precision, bb, target, cache,
                     lambda: batch if batch is not None else preprocessed(bb, source, calibration()),
                     threads=torch.get_num_threads())
        return resized, how

    if world == 1:
        return decide()
    if layout.multi:
        mine = decide() if rank == 0 else None
        decided = dist.from_rank0((mine[0].fields(), mine[1].fields()) if mine is not None else None,
                                  "waiting for rank 0 to choose the resampler and the backend")
        if rank == 0:
            return mine
        resized = ResamplerChoice(**decided[0])
        with_resampler(bb, resized.resampler)
        return resized, adopt(decided[1], bb, cache)
    mine = decide() if rank == 0 else None
    dist.barrier("waiting for rank 0 to choose the resampler and the backend")
    return mine if rank == 0 else decide()


class _SpaceOnDemand:
    """The run's feature space, created in the cache only once a batch of features has the declared size.

    A backbone whose model returns another feature size than its spec declares (a broken plugin) must
    not leave an empty space behind: until then an absent space is looked up (it holds nothing), never
    created. The check runs on every batch, before anything is stored.
    """

    def __init__(self, cache, config, backbone, also_present=None) -> None:
        self.cache = cache
        self.config = config
        self.backbone = backbone
        self.id = config.id
        self.also_present = also_present  # across machines: what the main cache held at the start
        self._space = cache.space(config) if self._exists() else None

    def _exists(self) -> bool:
        return self.cache.index.space(self.id) is not None

    def created(self):
        """The `CachedSpace`, created now when it does not exist yet."""
        if self._space is None:
            self._space = self.cache.space(self.config)
        return self._space

    def contains(self, keys: list[str]) -> list[bool]:
        if self._space is None and self._exists():  # another writer created it meanwhile
            self._space = self.cache.space(self.config)
        here = self._space.contains(keys) if self._space is not None else [False] * len(keys)
        if self.also_present is None:
            return here
        return [a or b for a, b in zip(here, self.also_present.contains(keys))]

    def append(self, keys: list[str], features: torch.Tensor) -> int:
        """Store a batch once its shape is the backbone's declared [N, feature_dim].

        Raises:
            PluginError: the model returned another feature size (nothing of this run is stored).
        """
        if features.dim() != 2 or features.shape[1] != self.config.dim:
            bb = self.backbone
            raise PluginError(f"backbone {bb.name} (plugin {bb.plugin or 'unknown'}) declares feature_dim="
                              f"{self.config.dim} but its model returned features of shape "
                              f"{list(features.shape[1:])} per image; nothing was stored (the plugin is broken: "
                              "`te plugins check` names what is wrong)")
        return self.created().append(keys, features)


class _InFlight:
    """Keys handed to the model whose rows are not committed yet: a later copy of one is not queued again.

    The set holds only keys in flight (a few batches), not every key of the run: once a batch is
    appended, its keys are `settle`d, and the producer drops them just BEFORE it asks the cache about
    its next chunk, so a dropped key is already visible there. `settle` runs in the consumer thread,
    `prune` and the set in the producer's; deque appends and pops are thread-safe.
    """

    def __init__(self) -> None:
        self.keys: set[str] = set()
        self._settled: deque[list[str]] = deque()

    def settle(self, keys: list[str]) -> None:
        self._settled.append(keys)

    def prune(self) -> None:
        while self._settled:
            self.keys.difference_update(self._settled.popleft())


class _Tally(NamedTuple):
    """One rank's counts and failures, as sent to the others (small: failures are few; labels are the
    distinct label texts a rank met in parts, as many as the classes)."""

    handled: int
    extracted: int
    reused: int
    failed: list[dict]
    decode_failures: list[tuple[str, dict]]
    labels: list[str]
    parts: dict


@dataclass
class _Run:
    """One rank's running counts; the failure lists grow with failures only."""

    handled: int = 0
    extracted: int = 0
    reused: int = 0
    failed: list[dict] = field(default_factory=list)  # {"path", "reason"}: unreadable or undecodable
    decode_failures: list[tuple[str, dict]] = field(default_factory=list)  # (key, {"path", "reason"})
    in_flight: _InFlight = field(default_factory=_InFlight)
    labels: set[str] = field(default_factory=set)  # parts only: label texts met
    parts: streamed.PartCounts = field(default_factory=streamed.PartCounts)

    def tally(self) -> _Tally:
        return _Tally(self.handled, self.extracted, self.reused, self.failed, self.decode_failures,
                      sorted(self.labels), self.parts.fields())


def _limited(samples: Iterator[Sample], limit: int | None) -> Iterator[Sample]:
    for i, sample in enumerate(samples):
        if limit is not None and i >= limit:
            return
        yield sample


def _chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pending(source: DataSource, samples: Iterable[tuple[int, Sample]], space, spool: RecordSpool, run: _Run,
             meter: Meter, clock: StageClock, tensor: bool) -> Iterator[Item]:
    """Hash each file, spool its record, and yield an `Item` only for keys the space lacks (once per key)."""
    for chunk in _chunked(samples, CHUNK):
        keyed: list[tuple[Sample, str]] = []
        for index, sample in chunk:
            run.handled += 1
            try:
                with clock.timing("read"):
                    data = source.read_bytes(sample)
                with clock.timing("hash"):
                    key = content_key(data)
                del data
            except OSError as exc:
                run.failed.append({"path": sample.path, "reason": f"{type(exc).__name__}: {exc.strerror or exc}"})
                meter.update(failed=1)
                continue
            keyed.append((sample, key))
            spool.write(index, sample.path, key, sample.label, sample.split or derived_split(key))
        run.in_flight.prune()  # before the lookup: what it drops is committed, so the lookup finds it
        present = space.contains([k for _, k in keyed]) if keyed else []
        for (sample, key), have in zip(keyed, present):
            if have or key in run.in_flight.keys:
                run.reused += 1
                meter.update(reused=1)
                continue
            run.in_flight.keys.add(key)
            read = _reader(source, sample, key, clock)
            yield Item(key, sample.path, _loader(source, sample, read, clock, tensor), read)


def _write_dataset(cache, space, dataset: str, class_names: list[str], records: Iterable[tuple],
                   ranks: list[_Tally], label_of: Callable[[str], int | None] | None = None) -> tuple[int, list[dict], dict]:
    """Store the data set from records in data-set order (rank 0); returns (reused, failed, splits).

    A record is left out when its file failed to decode, and also when it is a copy of such a file
    (same content key, no row in the space): a data set never names a key its space lacks.
    """
    reused = sum(t.reused for t in ranks)
    failed = [f for t in ranks for f in t.failed]
    failed_pairs = {(f["path"], key) for t in ranks for key, f in t.decode_failures}
    first_failure: dict[str, dict] = {}
    for t in ranks:
        for key, f in t.decode_failures:
            first_failure.setdefault(key, f)
    keys = list(first_failure)
    lost = {k: first_failure[k] for k, have in zip(keys, space.contains(keys) if keys else []) if not have}
    splits: dict[str, int] = {}

    def kept() -> Iterator[tuple]:
        nonlocal reused
        for _, path, key, label, split in records:
            if (path, key) in failed_pairs:
                continue
            if key in lost:  # counted as reused when it was skipped as a copy of a key in flight
                reused -= 1
                first = lost[key]
                failed.append({"path": path, "reason": f"same content as {display_path(first['path'])}, which "
                                                       f"failed: {first['reason']}"})
                continue
            splits[split] = splits.get(split, 0) + 1
            yield path, key, label if label_of is None else label_of(label), split

    cache.put_dataset(dataset, kept(), class_names)
    return reused, failed, dict(sorted(splits.items()))


def _merge_and_write(cache, space, dataset: str, class_names: list[str], spool: RecordSpool, ranks: list[_Tally],
                     rank: int, label_of: Callable[[str], int | None] | None = None) -> tuple | None:
    """Under torchrun: merge every rank's spool into data-set order on rank 0, then write the data set.

    The merge goes to a second spool first, so no collective runs while rank 0 holds the cache's
    write transaction (a rank that stalls then cannot keep the cache locked).
    """
    records = records_in_order(spool, spool.last_index)
    if rank != 0:
        for _ in records:  # takes part in the exchange; yields nothing here
            pass
        return None
    with RecordSpool(cache.root) as merged:
        for record in records:
            merged.write(*record)
        return _write_dataset(cache, space, dataset, class_names, merged, ranks, label_of)


def _gather_node_deltas(cache, layout: nodes.NodeLayout, rank: int, space_id: str, present, delta: Path | None) -> None:
    """Across machines, once every rank has extracted: each node's rows go to rank 0, which commits them
    to the main cache (before the data set that names them is written); then the nodes drop their deltas."""
    nodes.stream_deltas(cache, layout, rank, space_id, present)
    if delta is not None:
        cache.close()
    dist.barrier("removing the node's delta")  # no process of the node has the delta open any more
    if delta is not None and layout.local_rank == 0:
        nodes.remove_delta(delta)


def _reader(source: DataSource, sample: Sample, key: str, clock: StageClock) -> Callable[[], bytes]:
    """Reads the file again when its turn comes, and checks that it is still the content that was hashed."""
    def read() -> bytes:
        with clock.timing("read"):
            data = source.read_bytes(sample)
        with clock.timing("hash"):
            same = content_key(data) == key
        if not same:
            raise OSError("the file changed while te was extracting it")
        return data

    return read


def _first_decodable(source, limit: int) -> list[tuple[Sample, bytes]]:
    """The first `limit` images of a part source that decode, with their bytes (the calibration batch):
    read from the first parts, front to back, as extraction reads them."""
    out: list[tuple[Sample, bytes]] = []
    for record in source.records():
        if record.data is None:
            continue
        try:
            source.decode(record.sample, record.data, True)
        except Exception:  # a bad image is reported by the extraction itself
            continue
        out.append((record.sample, record.data))
        if len(out) >= limit:
            break
    return out


def _classes_of_parts(source, ranks: list[_Tally], data: str) -> tuple[list[str], Callable[[str], int | None]]:
    """The class names once every part is through: declared by the source, else from every rank's labels."""
    from transfer_engine.data.parts import LabelMap, class_names_from

    names = source.fixed_classes if source.fixed_classes is not None else \
        class_names_from(label for t in ranks for label in t.labels)
    if not names:
        raise UsageError(f"--data {data}: the data set holds no labelled images"
                         f"{first_skip([f for t in ranks for f in t.failed])}")
    return names, LabelMap(names).index


def _parts_total(ranks: list[_Tally]) -> dict:
    return {k: sum(t.parts[k] for t in ranks) for k in ranks[0].parts}


def _loader(source: DataSource, sample: Sample, read: Callable[[], bytes], clock: StageClock,
            tensor: bool) -> Callable:
    def load():
        data = read()
        with clock.timing("decode"):
            return source.decode(sample, data, tensor)

    return load
