"""Runs and exports that the export and predict tests share: real models on the real digits.

Runs are written with `RunWriter` as `te train` writes them: a feature cache holding the digits data
set's records (path, content key, label, split: what `te extract` stores), and a head fitted here.
Expensive things are built once per test run: `once()` keeps them beside the pytest workers' temporary
folders, so tests/export and tests/predict (whose conftests import the fixtures `lite` and `mobilenet`
from here) share one efficientnet_lite0 export, whichever workers run them. Tests only read them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transfer_engine.backbones import create_backbone
from transfer_engine.cache import FeatureCache, Record
from transfer_engine.data.sources import content_key, derived_split, open_source
from transfer_engine.heads import create_head
from transfer_engine.runs import HEAD_WEIGHTS, METRICS_JSON, RUN_JSON, BackboneRef, HeadRef, RunInfo, RunWriter

DIGITS = "builtin:digits"
FIXTURE = Path(__file__).resolve().parents[1] / "cache" / "fixtures" / "digit_features_efficientnet_lite0.npz"
CHECK_SIZE = 32
SELECTION_SIZE = 96  # int8's gate at 80% needs 11 images; fewer than te export's default keeps the test short


def once(base: Path, name: str, make: Callable[[Path], None]) -> Path:
    """`name`'s folder, made by `make(folder)` the first time it is asked for in this test run.

    Under pytest-xdist each worker is a session of its own with its own `base` (popen-gwN); the folder
    lives beside them, and a lock makes the first worker build it while another waits for it instead of
    building it again (the Lite0 export took 19-22 s in each of two workers)."""
    import fcntl

    shared = base.parent if base.name.startswith("popen-gw") else base
    folder = shared / "te-export-shared" / name
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed part-way starts again
            folder.mkdir(parents=True)
            make(folder)
            (folder / ".done").touch()
    return folder


def digits_cache(folder: Path) -> tuple[Path, list[Record]]:
    """A feature cache with the digits data set's records, as `te extract` writes them."""
    source = open_source(DIGITS)
    records = []
    for sample in source.samples():
        key = content_key(source.read_bytes(sample))
        records.append(Record(sample.path, key, sample.label, sample.split or derived_split(key)))
    with FeatureCache.open(folder / "cache") as cache:
        cache.put_dataset("digits", records, source.class_names)
    return folder / "cache", records


def write_run(out: Path, backbone, head: torch.nn.Module, cache: Path | None, data: str = DIGITS) -> Path:
    """A `te train`-style run directory for `backbone` + `head` on the digits."""
    ref = BackboneRef.of(backbone)
    classes = open_source(DIGITS).class_names
    info = RunInfo(kind="train", backbone=ref, preprocess=backbone.preprocess.to_dict(),
                   head=HeadRef("linear", ref.feature_dim, len(classes)), class_names=classes,
                   weights_file=HEAD_WEIGHTS, seed=0,
                   dataset={"name": "digits", "cache": str(cache) if cache else None, "data": data})
    with RunWriter(out, overwrite=True) as w:
        w.save_tensors(HEAD_WEIGHTS, head.state_dict())
        w.write_json(METRICS_JSON, {"train_accuracy": None, "val_accuracy": None, "test_accuracy": None,
                                    "hyperparameters": {"fitted_on": "train"}})  # as te train writes
        w.write_json(RUN_JSON, info.to_dict())
    return out


def fit_linear_head(features: np.ndarray, labels: np.ndarray, classes: int = 10) -> torch.nn.Module:
    """te's linear head fitted by L-BFGS on (features, labels) (a second or two for a few hundred rows)."""
    torch.manual_seed(0)
    head = create_head("linear", features.shape[1], classes)
    x, y = torch.from_numpy(features).float(), torch.from_numpy(labels).long()
    opt = torch.optim.LBFGS(head.parameters(), max_iter=60, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x), y) + 1e-3 * sum(p.pow(2).sum() for p in head.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return head.eval()


def lite_run(folder: Path) -> Path:
    """efficientnet_lite0 with its real ImageNet weights and a linear head fitted on the real features of
    the train-split digits among the first 900 (tests/cache/fixtures: extracted by the same backbone)."""
    cache, records = digits_cache(folder)
    fixture = np.load(FIXTURE)
    train = np.array([r.split == "train" for r in records[: len(fixture["labels"])]])
    head = fit_linear_head(fixture["features"][train], fixture["labels"][train])
    return write_run(folder / "run", create_backbone("efficientnet_lite0"), head, cache)


def mobilenet_run(folder: Path, cache: Path | None = None, data: str = DIGITS) -> Path:
    """A cheap run: mobilenet_v3_small with seeded random weights and a seeded random linear head."""
    backbone = create_backbone("mobilenet_v3_small", weights="none", seed=0)
    torch.manual_seed(0)
    return write_run(folder / "run", backbone, create_head("linear", backbone.feature_dim, 10).eval(), cache, data)


def lite_export(base: Path) -> Path:
    """The shared export: efficientnet_lite0 run -> int8 (deployed) + fp32, preprocessing in the graph,
    backbone/head split; its folder holds run/, cache/ and out/lite*.onnx."""
    from transfer_engine.export import export_onnx

    def make(folder: Path) -> None:
        run = lite_run(folder)
        export_onnx(run, folder / "out" / "lite.onnx", quantize="int8", preprocess=True, split=True,
                    check_size=CHECK_SIZE, calibration_size=32, selection_size=SELECTION_SIZE, min_agreement=0.8,
                    batch_sizes=(1, 3, 8),
                    min_int8_speedup=0)  # tests assert no timings

    return once(base, "lite", make)


def mobilenet_export(base: Path) -> Path:
    """A float-input fp32 export of the cheap mobilenet run (preprocessing from metadata)."""
    from transfer_engine.export import export_onnx

    def make(folder: Path) -> None:
        cache, _ = digits_cache(folder)
        export_onnx(mobilenet_run(folder, cache), folder / "out" / "mnv3.onnx", check_size=24)

    return once(base, "mobilenet", make)


@pytest.fixture(scope="session")
def lite(tmp_path_factory) -> Path:
    """Folder with run/ (efficientnet_lite0 + fitted linear head), cache/ and out/lite*.onnx."""
    return lite_export(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def mobilenet(tmp_path_factory) -> Path:
    """Folder with run/ (random mobilenet_v3_small), cache/ and out/mnv3.onnx (float input)."""
    return mobilenet_export(tmp_path_factory.getbasetemp())
