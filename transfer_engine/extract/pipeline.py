"""The extraction pipeline: decode and transform in worker threads while the model runs.

Decoding (PIL / libjpeg) and resizing release the GIL, so threads overlap them with the forward pass
without the start-up cost and pickling of worker processes. At most `prefetch` batches are in
flight, so memory stays bounded however many images stream through.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch

from transfer_engine._prefetch import prefetched
from transfer_engine.backbones.spec import Backbone
from transfer_engine.core.choices import EXTRACT_PRECISIONS as PRECISIONS
from transfer_engine.extract.engines import TorchEngine
from transfer_engine.extract.stages import UNTIMED



@dataclass
class Item:
    """One image to extract: its cache key, where it came from, and a loader of its pixels."""

    key: str
    path: str
    load: Callable[[], Any]  # returns a PIL image or uint8 tensor (or raises: the item is then reported as failed)
    read: Callable[[], bytes] | None = None  # its checked encoded bytes (decoding on the device needs them)


@dataclass
class Batch:
    """Features of the items that decoded, and the reasons of those that did not."""

    keys: list[str]
    paths: list[str]
    features: torch.Tensor  # [len(keys), feature_dim], float32, on the extraction device
    failed: list[dict] = field(default_factory=list)  # {"path": ..., "reason": ...}
    failed_keys: list[str] = field(default_factory=list)  # the content key of each failed item


class FeatureExtractor:
    """Runs a backbone over a stream of `Item`s in batches.

    Args:
        backbone: the built backbone (its preprocessing is used for every image).
        device: where the features end up (and the model runs).
        precision: "fp32", "bf16" or "fp16" compute (autocast) of the default PyTorch engine.
        batch_size: images per forward pass.
        workers: decode/transform threads.
        prefetch: batches prepared ahead of the model (bounds memory).
        engine: what computes the features (`transfer_engine.extract.engines`; default: PyTorch in
            `precision`); they come back as float32.
        clock: a `StageClock` that receives the seconds of "preprocess", "waiting_for_images" and
            "compute" (the items' loaders time their own reading and decoding).
        decode_on_device: the worker threads only read the files; each batch is decoded, resized and
            normalized on `device` (`transfer_engine.extract.device_decode`: nvjpeg on a GPU), so only
            compressed bytes cross to it. Needs items with `read` and the "torch" resampler.
    """

    def __init__(self, backbone: Backbone, device: torch.device, precision: str = "fp32",
                 batch_size: int = 32, workers: int = 2, prefetch: int = 2, engine=None, clock=UNTIMED,
                 decode_on_device: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.backbone = backbone
        self.device = device
        self.batch_size = max(1, batch_size)
        self.workers = max(1, workers)
        self.prefetch = max(1, prefetch)
        self.clock = clock
        if decode_on_device and backbone.preprocess.resampler != "torch":
            raise ValueError("decoding on the device resizes with torch: it needs the torch resampler")
        self.decode_on_device = decode_on_device
        # The backbone's preprocessing, resized by PIL or torch as the run's spec says (the resampler is part
        # of the feature space: transfer_engine.extract.resampler; figures: docs/extract.md, "Preprocessing").
        self.transform = backbone.transform()
        self.engine = engine if engine is not None else TorchEngine(backbone, device, precision)

    def _prepare(self, item: Item) -> tuple[Item, torch.Tensor | bytes | None, str | None]:
        try:
            if self.decode_on_device:
                return item, item.read(), None  # bytes: decoded with the whole batch, on the device
            image = item.load()
            with self.clock.timing("preprocess"):
                return item, self.transform(image), None
        except Exception as exc:  # a bad file is reported, never fatal
            return item, None, _reason(exc)

    def _batches(self, items: Iterable[Item], pool: ThreadPoolExecutor) -> Iterator[tuple]:
        """Batches ready for the model, in input order: (items, their inputs as one tensor or None, failed
        (item, reason) pairs). Assembled here, in the prefetch thread, so the model's thread only computes."""
        pending: list = []
        it = iter(items)
        window = self.batch_size * (self.prefetch + 1)
        exhausted = False
        while True:
            while not exhausted and len(pending) < window:
                try:
                    pending.append(pool.submit(self._prepare, next(it)))
                except StopIteration:
                    exhausted = True
            if not pending:
                return
            take, pending = pending[: self.batch_size], pending[self.batch_size:]
            good_items, prepared, failed = [], [], []
            for fut in take:
                item, ready, reason = fut.result()
                if ready is None:
                    failed.append((item, reason))
                else:
                    good_items.append(item)
                    prepared.append(ready)
            if self.decode_on_device:  # the files' bytes: the batch decodes now, on the device
                yield self._on_device(good_items, prepared, failed)
            else:
                yield good_items, torch.stack(prepared) if prepared else None, failed

    def run(self, items: Iterable[Item]) -> Iterator[Batch]:
        """Extract features batch by batch, preparing the next batches while the model runs."""
        batches = prefetched(self._prepared(items), self.prefetch, "te-prefetch")
        try:
            while True:
                with self.clock.timing("waiting_for_images"):
                    prepared = next(batches, None)
                if prepared is None:
                    return
                yield self._forward(*prepared)
        finally:
            batches.close()  # stopped early: the prefetch thread and the decode pool stop now, not at GC

    def _prepared(self, items: Iterable[Item]) -> Iterator[tuple]:
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="te-decode")
        try:
            yield from self._batches(items, pool)
        finally:
            # Stopped early (Ctrl-C, an error): the decodes not begun are dropped, not run; otherwise the
            # interpreter's exit would wait for a whole window of them (its atexit joins the workers).
            pool.shutdown(wait=True, cancel_futures=True)

    def _on_device(self, items: list[Item], datas: list[bytes], failed: list[tuple[Item, str]]) -> tuple:
        """The batch's bytes decoded and preprocessed on the device: (items that decoded, their inputs as
        one tensor or None, failed (item, reason) pairs)."""
        from transfer_engine.extract.device_decode import decode_batch, preprocess_batch

        with self.clock.timing("decode"):
            decoded = decode_batch(datas, self.device)
        good, images = [], []
        for item, result in zip(items, decoded):
            if isinstance(result, Exception):
                failed.append((item, _reason(result)))
            else:
                good.append(item)
                images.append(result)
        with self.clock.timing("preprocess"):
            batch = preprocess_batch(images, self.backbone.preprocess) if images else None
        return good, batch, failed

    def _forward(self, items: list[Item], inputs: torch.Tensor | None, failed: list[tuple[Item, str]]) -> Batch:
        reasons = [{"path": item.path, "reason": reason} for item, reason in failed]
        failed_keys = [item.key for item, _ in failed]
        if inputs is None:
            empty = torch.empty(0, self.backbone.feature_dim, device=self.device)
            return Batch([], [], empty, reasons, failed_keys)
        with self.clock.timing("compute"):
            features = self.engine(inputs)
        return Batch([i.key for i in items], [i.path for i in items], features, reasons, failed_keys)


def _reason(exc: Exception) -> str:
    """A failed file's reason: the exception's type and first line."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'unreadable'}"
