"""Real images for export and prediction: the run's held-out split, its training split, or a --data SRC.

`te export` uses three disjoint sets of the run's own images:
    check        the test split (val only when the data set has no test split): parity of every variant,
                 and the int8 model's unbiased figures; nothing is chosen on them
    calibration  train images: int8's activation ranges and its ranking of sensitive nodes
    selection    val images the model was not fitted on, or --selection-data (no check or calibration image,
                 compared by content key): the int8 gate judges each mix of int8 and float nodes on them;
                 labels are not needed
The records the feature cache keeps for the data set (path, content key, label, split) say which image is
in which split, and `open_source` reads them again. The content key is re-checked, so an image changed since extraction is skipped, not
silently used. Without the cache the same stable split is derived from the bytes (`derived_split`).

`--check-data`, `--calibration-data` and `--selection-data` are read by `data.unlabelled.open_images`, which also
accepts a flat folder of images or one image file (unlabelled), as te predict does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from transfer_engine.core.paths import display_path, fs_path
from transfer_engine.data.sources import (DataSource, Sample, content_key, derived_split, locate_recorded_data,
                                          open_source)
from transfer_engine.data.unlabelled import open_images
from transfer_engine.errors import UsageError

HELD_OUT = ("test", "val")  # the check images' split: test, or val when the data set has no test split


@dataclass
class ImageSet:
    """Images chosen for a purpose (parity check, calibration).

    Attributes:
        description: where they come from, for people ("test/val split of builtin:digits, the run's data").
        source: the source that reads and decodes them.
        samples: the chosen samples, in order.
        labels: each sample's label as an index into the run's class names (None: unlabelled).
        keys: the content key each sample had at extraction (None: not known, not checked).
    """

    description: str
    source: DataSource
    samples: list[Sample]
    labels: list[int | None]
    keys: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, exclude: frozenset[str] = frozenset()) -> tuple[list[Any], list[int | None], list[dict[str, str]]]:
        """Read and decode every image (`loaded_keys` then holds each one's content key).

        Args:
            exclude: content keys of images another set holds: such an image is left out (not a failure).

        Returns:
            (PIL RGB images, their labels, failures [{path, reason}] for the images skipped).
        """
        images, labels, failed = [], [], []
        self.loaded_keys: list[str] = []
        keys = self.keys or [None] * len(self.samples)
        for sample, label, key in zip(self.samples, self.labels, keys):
            try:
                data = self.source.read_bytes(sample)
                actual = content_key(data)
                if key is not None and actual != key:
                    raise ValueError("the file changed since its features were extracted")
                if actual in exclude:
                    continue
                images.append(self.source.decode(sample, data))
                labels.append(label)
                self.loaded_keys.append(actual)
            except Exception as exc:  # unreadable, truncated, not an image: skipped and reported
                failed.append({"path": display_path(sample.path), "reason": f"{type(exc).__name__}: {exc}"[:200]})
        return images, labels, failed


def held_out_images(run: Any, check_data: str | None, limit: int) -> ImageSet:
    """Labelled held-out images to check parity on.

    Args:
        run: the `Run`.
        check_data: --check-data SRC (all its images, or its test split folder, else val), or None for the
            test split of the run's own data set (val when it has none).
        limit: at most this many, spread evenly over the set.

    Raises:
        UsageError: no such data, no labels, classes the run does not know, or no held-out images.
    """
    if check_data is not None:
        source = open_images(check_data)
        if not source.class_names:
            raise UsageError(f"--check-data {check_data} has no labels; the parity check reports accuracy, so it "
                             "needs labelled images: CLASS/IMAGE folders, a path,label manifest or builtin:NAME")
        samples = list(source.samples())
        held = _check_split(samples) or samples
        chosen = _spread(held, limit)
        labels = _map_labels(source.class_names, run.class_names, [s.label for s in chosen], f"--check-data {check_data}")
        where = f"its {held[0].split} split" if held is not samples else "all its images"
        return ImageSet(f"{len(chosen)} images of {check_data} ({where})", source, chosen, labels, [])
    source, records, note = _run_data(run, "--check-data SRC with labelled held-out images")
    if records is not None:
        held_records = _check_split(records)
        if any(r.label is None for r in held_records):
            raise UsageError(f"the run's data set {run.info.dataset.get('name')!r} has unlabelled check (test/val) images; "
                             "pass --check-data SRC with labelled images")
        samples, keys = _samples_of(_spread(held_records, limit))
    else:
        samples, keys = _spread(_check_split(list(_with_splits(source))), limit), []
    if not samples:
        raise UsageError(f"the run's data {run.info.dataset.get('data')!r} has no val or test images; pass "
                         "--check-data SRC with labelled held-out images")
    # Records from the cache carry the data set's labels, which are the run's (its identity was checked);
    # only samples read from the source itself are labelled in the source's classes.
    labelled_in = run.class_names if records is not None else source.class_names
    labels = _map_labels(labelled_in, run.class_names, [s.label for s in samples],
                         f"the run's data {run.info.dataset.get('data')}")
    data = run.info.dataset.get("data")
    split = samples[0].split
    return ImageSet(f"{len(samples)} {split} images of {data} (the run's data set{note})", source, samples, labels,
                    keys)


def train_images(run: Any, calibration_data: str | None, limit: int) -> ImageSet:
    """Training images to calibrate int8 quantization on (labels are not needed).

    Args:
        run: the `Run`.
        calibration_data: --calibration-data SRC (all its images), or None for the run's train split.
        limit: at most this many, spread evenly.

    Raises:
        UsageError: the run's data is not available and no --calibration-data was given.
    """
    if calibration_data is not None:
        return _images_of("--calibration-data", calibration_data, limit)
    source, records, note = _run_data(run, "--calibration-data SRC with training images")
    if records is not None:
        samples, keys = _samples_of(_spread([r for r in records if r.split == "train"], limit))
    else:
        samples, keys = _spread([s for s in _with_splits(source) if s.split == "train"], limit), []
    if not samples:
        raise UsageError(f"the run's data {run.info.dataset.get('data')!r} has no train images to calibrate on; "
                         "pass --calibration-data SRC")
    return ImageSet(f"{len(samples)} train images of {run.info.dataset.get('data')} (the run's data set{note})",
                    source, samples, [None] * len(samples), keys)


def selection_images(run: Any, selection_data: str | None, limit: int, check: ImageSet,
                     calibration: ImageSet) -> ImageSet:
    """Images the int8 gate judges each mix on: images of the run's kind its model was not fitted on, and
    neither check nor calibration images (labels are not needed).

    The model fits its own training images better than new ones (larger margins), so int8 agrees with it
    more often on them: a gate judged on train images passes mixes that fail on new images (docs/export.md,
    "The int8 gate", has the figures).
    So the run's images are the val split when the model was not fitted on it (the images te train held
    out of train when the data set has no val split), never train; `--selection-data` adds none of the
    run's own: any images of this kind, unlabelled ones included.

    Args:
        run: the `Run`.
        selection_data: --selection-data SRC (all its images), or None for the run's unfitted images.
        limit: at most this many, spread evenly.
        check, calibration: the other two sets; their images are left out by path here and by content
            key when the selection images are loaded (`ImageSet.load(exclude=...)`).

    Returns:
        The set; it may be empty, with why in its description (the gate then says how many it needs).
    """
    from transfer_engine.core.splits import hold_out

    if selection_data is not None:
        return _images_of("--selection-data", selection_data, limit)
    data = run.info.dataset.get("data")
    fitted = run.val_was_fitted()
    if fitted is not False:
        why = ("its model was fitted on train and val (te train --sweep refits the best head on both; "
               "--no-refit does not)" if fitted
               else "the run does not record whether its model was fitted on val (an older run)")
        return ImageSet(f"{data} has none: {why}, and its other images are test images", None, [], [], [])  # type: ignore[arg-type]
    if check.samples and check.samples[0].split == "val":  # decided before reading anything
        return ImageSet(f"{data} has none: its val images are the check images (it has no test split)",
                        None, [], [], [])  # type: ignore[arg-type]
    source, records, note = _run_data(run, "--selection-data SRC with images of this kind")
    items = records if records is not None else list(_with_splits(source))
    pool = [r for r in items if r.split == "val"]
    where = "val"
    if not pool and records is not None:  # te train held val out of train by this rule (`core.splits.hold_out`)
        pool, where = hold_out([r for r in records if r.split == "train"])[1], "held-out train"
    taken = {s.path for s in [*check.samples, *calibration.samples]}
    if records is not None:
        samples, keys = _samples_of(_spread([r for r in pool if fs_path(r.path) not in taken], limit))
    else:
        samples, keys = _spread([s for s in pool if s.path not in taken], limit), []
    return ImageSet(f"{len(samples)} {where} images of {data}, which the model was not fitted on (the run's "
                    f"data set{note})", source, samples, [None] * len(samples), keys)


def _images_of(option: str, spec: str, limit: int) -> ImageSet:
    """All the images of `spec` (what --calibration-data / --selection-data names), at most `limit` spread
    evenly, unlabelled.

    Raises:
        UsageError: no such data, or no images in it.
    """
    source = open_images(spec)
    chosen = _spread(list(source.samples()), limit)
    if not chosen:
        raise UsageError(f"{option} {spec} holds no images")
    return ImageSet(f"{len(chosen)} images of {spec}", source, chosen, [None] * len(chosen), [])


def _samples_of(records: list) -> tuple[list[Sample], list[str | None]]:
    """The samples that read the cache's `records` again, and their content keys (checked when read)."""
    return [Sample(fs_path(r.path), r.label, r.split) for r in records], [r.key for r in records]


def _check_split(items: list) -> list:
    """The items (records or samples) of the check images' split: test, else val."""
    for split in HELD_OUT:
        held = [item for item in items if item.split == split]
        if held:
            return held
    return []


def _run_data(run: Any, alternative: str) -> tuple[DataSource, list | None, str]:
    """The run's data source, its data set's records from the feature cache (None when they cannot be
    read), and a note for the report when they could not."""
    dataset = run.info.dataset or {}
    data = dataset.get("data")
    if not data:
        raise UsageError(f"run {run.path} does not record where its images are; pass {alternative}")
    try:
        source = open_source(locate_recorded_data(str(data), dataset.get("cache"), run.path))
    except UsageError as exc:
        raise UsageError(f"the run's data is not available ({exc}); pass {alternative}") from None
    records, why = run.cached_records()
    # the cache moved or lost the data set: the splits are derived from the bytes instead, and the report says so
    note = f"; splits derived from the image bytes ({why})" if records is None else ""
    return source, records, note


def _with_splits(source: DataSource) -> Iterator[Sample]:
    """The source's samples with the split extraction gave them (the stable split derived from the bytes
    when the source does not say)."""
    for s in source.samples():
        if s.split is not None:
            yield s
            continue
        try:
            split = derived_split(content_key(source.read_bytes(s)))
        except OSError:
            split = "test"  # unreadable: kept, so the check reports it as failed rather than hiding it
        yield Sample(s.path, s.label, split)


def _spread(items: list, limit: int) -> list:
    """At most `limit` items spread evenly over the list (a prefix would often be a single class)."""
    if len(items) <= limit:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def _map_labels(source_classes: list[str], run_classes: list[str], labels: list, what: str) -> list[int | None]:
    """Labels of a source as indices into the run's class names (matched by name)."""
    index = {name: i for i, name in enumerate(run_classes)}
    unknown = sorted({source_classes[lab] for lab in labels if lab is not None and source_classes[lab] not in index})
    if unknown:
        raise UsageError(f"{what} has classes the run was not trained on: {', '.join(unknown[:5])}; the run's "
                         f"classes are {', '.join(run_classes[:10])}{'...' if len(run_classes) > 10 else ''}")
    return [None if lab is None else index[source_classes[lab]] for lab in labels]
