"""Where a fine-tuning run starts: a `te train` run (`--from RUN`) or a backbone, data and new head.

Both give the same `Start`: the model, the labelled items with their splits, the preprocessing, and the
provenance the output run records.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from transfer_engine.backbones.spec import PreprocessSpec
from transfer_engine.data.sources import DataSource, default_dataset_name, locate_recorded_data, open_source, recorded_data
from transfer_engine.errors import UsageError
from transfer_engine.finetune.data import Item, items_from_records, items_from_source
from transfer_engine.runs import BackboneRef, Classifier, HeadRef


@dataclass
class Start:
    """The starting point of a fine-tuning run.

    Attributes:
        model: backbone + head, as trained so far (or a new head).
        items: every labelled image with its split.
        source: where the images are read from.
        preprocess: the preprocessing the starting weights expect (before --input-size).
        class_names: one per logit.
        backbone: the backbone and the weights it started from.
        head: the head.
        dataset: {"name", "cache", "data"} for run.json.
        parent: the --from run's directory, or None.
        parent_metrics: the --from run's metrics.json (train/val/test accuracy), or {}.
    """

    model: Classifier
    items: list[Item]
    source: DataSource
    preprocess: PreprocessSpec
    class_names: list[str]
    backbone: BackboneRef
    head: HeadRef
    dataset: dict[str, Any]
    parent: str | None = None
    parent_metrics: dict[str, Any] = field(default_factory=dict)


def from_run(path: str | os.PathLike, limit: int | None = None) -> Start:
    """Start from a finished run: its backbone weights, its trained head, its data set and splits.

    Args:
        path: a `te train` (or `te finetune`) run directory.
        limit: use only the first N images of its data set.

    Raises:
        UsageError: not a run, or its data set / cache / data can no longer be found.
        WeightsError: the backbone weights changed since the run (digest mismatch).
    """
    from transfer_engine.runs import Run

    run = Run.open(path)
    info = run.info
    dataset = dict(info.dataset or {})
    data = dataset.get("data")
    if not data:
        raise UsageError(f"{run.path} does not record its --data; fine-tune with --backbone NAME --data SRC "
                         "--head HEAD")
    source = open_source(locate_recorded_data(data, dataset.get("cache"), run.path))
    if dataset.get("cache") and dataset.get("name"):
        records, why = run.cached_records()
        if records is None:  # te train's splits cannot be rebuilt: fine-tuning would select on other images
            raise UsageError(f"the run {run.path} needs the records of the data set it was trained on: {why}")
        items = items_from_records(source, records, limit)
    else:  # a run fine-tuned from --backbone/--data: splits as te extract derives them
        items = items_from_source(source, limit)
    bb = run.build_backbone()
    model = Classifier(bb.model, run.build_head())
    return Start(model=model, items=items, source=source, preprocess=run.preprocess,
                 class_names=run.class_names, backbone=info.backbone, head=info.head,
                 dataset={"name": dataset.get("name"), "cache": dataset.get("cache"), "data": data,
                          "sha256": dataset.get("sha256")},
                 parent=str(run.path), parent_metrics=dict(run.metrics))


def from_backbone(backbone: str, data: str, head: str, *, weights: str = "DEFAULT", seed: int = 0,
                  head_options: dict[str, Any] | None = None, limit: int | None = None) -> Start:
    """Start from a backbone's weights and a new head; splits as `te extract` derives them.

    Args:
        backbone: a backbone name.
        data: a folder, manifest or builtin:NAME.
        head: a head name (`te heads`).
        weights: the backbone's weights ("DEFAULT", a name, "none", a state-dict path).
        seed: seed of the head's (and a random backbone's) initialization.
        head_options: options of the head.
        limit: use only the first N images.
    """
    from transfer_engine.backbones import create_backbone
    from transfer_engine.heads import check_options, create_head
    from transfer_engine.heads import registry as head_registry

    spec, record = head_registry.lookup(head)
    options = check_options(spec, dict(head_options or {}))  # a bad option fails before any image is read
    source = open_source(data)
    items = items_from_source(source, limit)
    bb = create_backbone(backbone, weights=weights, seed=seed)
    classes = list(source.class_names)
    torch.manual_seed(seed)  # the head's initialization, the same on every rank
    model = Classifier(bb.model, create_head(head, bb.feature_dim, len(classes), **options))
    return Start(model=model, items=items, source=source, preprocess=bb.preprocess, class_names=classes,
                 backbone=BackboneRef.of(bb),
                 head=HeadRef(head, bb.feature_dim, len(classes), {**spec.options, **options}, record.distribution),
                 dataset={"name": default_dataset_name(source, data), "cache": None, "data": recorded_data(data)})
