"""A data set's name is not its identity: where its images came from, its classes and its records are.
te extract refuses to replace a data set by another folder's images or by other classes unless --replace
says so; a run records the data set it was trained on, and te finetune --from / te export refuse to use a
data set that has changed under its name (a renamed class would otherwise swap every label)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.cache import FeatureCache, FeatureSpace, identity
from transfer_engine.errors import UsageError

TINY = ["--backbone", "tiny_cnn", "--weights", "none", "--backend", "torch"]


def _key(i: int) -> str:
    return hashlib.sha256(f"img{i}".encode()).hexdigest()


def _store(root, name: str, source: str, classes: list[str], n: int = 60, start: int = 0) -> None:
    """Data set `name` of `n` images (features that separate the classes), from `source`, into cache `root`."""
    rng = np.random.default_rng(start)
    keys = [_key(i) for i in range(start, start + n)]
    labels = [i % len(classes) for i in range(n)]
    x = torch.tensor(rng.normal(size=(n, 8)), dtype=torch.float32) + 3 * torch.nn.functional.one_hot(
        torch.tensor(labels), 8).float()
    splits = ["train"] * (n * 7 // 10) + ["val"] * (n * 15 // 100) + ["test"] * (n - n * 7 // 10 - n * 15 // 100)
    with FeatureCache.open(root) as cache:
        space = cache.space(FeatureSpace(backbone="b", weights_digest="0" * 64, transform={}, dim=8, stored="fp32"))
        space.append(keys, x)
        cache.put_dataset(name, [(f"{source}/img{i}.png", k, lab, sp)
                                 for i, (k, lab, sp) in enumerate(zip(keys, labels, splits))], classes)
        identity.record_source(cache, name, source)


def test_another_source_or_other_classes_under_the_same_name_are_refused_unless_replace(tmp_path):
    _store(tmp_path / "cache", "photos", "/projA/photos", ["cat", "dog"])
    with FeatureCache.open(tmp_path / "cache") as cache:
        identity.check_replacement(cache, "photos", "/projA/photos", ["cat", "dog"], replace=False)  # re-run: fine
        with pytest.raises(UsageError, match=r"data set 'photos' in .* holds the images of /projA/photos, not of "
                                             r"/projB/photos; pass --name NEW to keep both, or --replace"):
            identity.check_replacement(cache, "photos", "/projB/photos", ["cat", "dog"], replace=False)
        with pytest.raises(UsageError, match=r"has the classes \[cat, dog\]; --data /projA/photos has \[dog, kitten\]"):
            identity.check_replacement(cache, "photos", "/projA/photos", ["dog", "kitten"], replace=False)
        identity.check_replacement(cache, "photos", "/projB/photos", ["dog", "kitten"], replace=True)


def test_a_run_refuses_its_data_set_once_the_classes_or_the_records_changed(tmp_path):
    from transfer_engine.runs import Run
    from transfer_engine.train import train

    cache = tmp_path / "cache"
    _store(cache, "photos", "/projA/photos", ["cat", "dog"])
    run = train(cache, head="linear", out=tmp_path / "run", progress=False).run
    assert len(Run.open(run).cached_records()[0]) == 60  # unchanged: the records te train used

    _store(cache, "photos", "/projA/photos", ["cat", "dog"], n=70)  # images added under the same name
    with pytest.raises(UsageError, match=r"data set 'photos' in .* changed since the run .* was trained on it"):
        Run.open(run).cached_records()

    _store(cache, "photos", "/projA/photos", ["dog", "kitten"])  # a class renamed: labels now mean other classes
    with pytest.raises(UsageError, match=r"now has the classes \[dog, kitten\], the run .* was trained on \[cat, dog\]"):
        Run.open(run).cached_records()


def test_a_run_records_the_data_of_its_own_data_set_not_of_the_spaces_last_extract(tmp_path):
    from transfer_engine.train import train

    cache = tmp_path / "cache"
    _store(cache, "dA", "/data/dA", ["a", "b"])
    _store(cache, "dB", "/data/dB", ["c", "d"], start=1000)  # the same space, extracted last
    run = train(cache, head="linear", dataset="dA", out=tmp_path / "run", progress=False).run
    recorded = json.loads((run / "run.json").read_text())["dataset"]
    assert recorded["data"] == "/data/dA" and recorded["sha256"]


def _folder(root, classes, n=12):
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / classes[i % len(classes)] / f"img{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)


def test_te_extract_refuses_a_renamed_class_with_one_line_and_replaces_it_when_told(te, good_plugin_site, tmp_path):
    env = {"PYTHONPATH": str(good_plugin_site)}
    photos = tmp_path / "projA" / "photos"
    _folder(photos, ["cat", "dog"])
    args = [*TINY, "--data", str(photos), "--cache", str(tmp_path / "cache")]
    assert te("extract", *args, env=env).code == 0
    (photos / "cat").rename(photos / "kitten")

    refused = te("extract", *args, env=env)

    assert refused.code == 2 and "internal error" not in refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.startswith("te:")]
    assert lines == [f"te: error: data set 'photos' in {tmp_path / 'cache'} has the classes [cat, dog]; --data "
                     f"{photos} has [dog, kitten]; pass --name NEW to keep both, or --replace to replace it (runs "
                     "trained on it will then refuse to continue from it)"]
    replaced = te("extract", *args, "--replace", "--json", env=env)
    assert replaced.code == 0, replaced.stderr
    with FeatureCache.open(tmp_path / "cache", create=False) as cache:
        assert cache.index.dataset_classes("photos") == ["dog", "kitten"]
