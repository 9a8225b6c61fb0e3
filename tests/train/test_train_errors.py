"""Bad input stops `train()` with one clear line, and never leaves something that looks like a finished run."""

from __future__ import annotations

import pytest
import torch

from transfer_engine.cache import FeatureCache, Record
from transfer_engine.cache.shards import HEADER_BYTES
from transfer_engine.errors import CacheError, NotACacheError, UsageError
from transfer_engine.runs import RUN_JSON
from transfer_engine.train import train

from .conftest import digit_records, fill_cache


def _nothing_written(parent, name="run"):
    assert not (parent / name).exists()
    assert not list(parent.glob(f".{name}.partial-*"))


def _small_cache(root, records, class_names, dim=4):
    gen = torch.Generator().manual_seed(0)
    fill_cache(root, torch.randn(len(records), dim, generator=gen), records=records, class_names=class_names,
               name="tiny", stored="fp32", transform={})


def _records(labels_and_splits):
    from transfer_engine.cache import content_key

    return [Record(f"img{i}.png", content_key(f"img{i}".encode()), label, split)
            for i, (label, split) in enumerate(labels_and_splits)]


def test_a_data_set_with_one_class_is_refused(tmp_path):
    _small_cache(tmp_path / "cache", _records([(0, "train")] * 6 + [(0, "val")] * 2), ["cat"])
    with pytest.raises(UsageError, match="1 class.*at least 2"):
        train(tmp_path / "cache", out=tmp_path / "run", progress=False)
    _nothing_written(tmp_path)


def test_a_train_split_of_one_class_is_refused(tmp_path):
    _small_cache(tmp_path / "cache", _records([(0, "train")] * 6 + [(1, "val")] * 2), ["cat", "dog"])
    with pytest.raises(UsageError, match="train split .* single class"):
        train(tmp_path / "cache", out=tmp_path / "run", progress=False)
    _nothing_written(tmp_path)


def test_an_empty_train_split_is_refused_and_a_missing_val_split_is_held_out(tmp_path):
    _small_cache(tmp_path / "cache", _records([(i % 2, "val") for i in range(6)] + [(0, "test")]), ["cat", "dog"])
    with pytest.raises(UsageError, match="no labelled samples in split 'train'.*val \\(6\\)"):
        train(tmp_path / "cache", out=tmp_path / "run", progress=False)
    _nothing_written(tmp_path)

    _small_cache(tmp_path / "cache2", _records([(i % 2, "train") for i in range(20)]), ["cat", "dog"])
    result = train(tmp_path / "cache2", out=tmp_path / "run2", progress=False)
    assert result.metrics["samples"] == {"train": 16, "val": 4}  # 15% of each class, by content key
    assert result.metrics["test_accuracy"] is None

    _small_cache(tmp_path / "cache3", _records([(0, "train"), (1, "train")]), ["cat", "dog"])
    with pytest.raises(UsageError, match="no val split and too few train samples"):
        train(tmp_path / "cache3", out=tmp_path / "run3", progress=False)


def test_a_cache_without_the_space_asked_for_is_refused(digit_cache, tmp_path):
    with pytest.raises(UsageError, match="no features of backbone 'resnet50'.*efficientnet_lite0.*te extract"):
        train(digit_cache, backbone="resnet50", out=tmp_path / "run", progress=False)
    with pytest.raises(UsageError, match="no space .* match 'abc123'"):
        train(digit_cache, space="abc123", out=tmp_path / "run", progress=False)
    with pytest.raises(UsageError, match="has no data set 'flowers'; it has: digits"):
        train(digit_cache, dataset="flowers", out=tmp_path / "run", progress=False)
    with pytest.raises(NotACacheError, match="does not exist"):
        train(tmp_path / "nowhere", out=tmp_path / "run", progress=False)
    _nothing_written(tmp_path)


def test_a_space_lacking_some_rows_of_the_data_set_is_refused(digit_features, tmp_path):
    records, classes = digit_records()
    fill_cache(tmp_path / "cache", digit_features[0][:800], records=records[:800], class_names=classes)
    with FeatureCache.open(tmp_path / "cache") as cache:
        cache.put_dataset("digits", records, classes)  # the data set grew; its features did not
    with pytest.raises(UsageError, match="lacks 100 of the 900 rows.*te extract"):
        train(tmp_path / "cache", out=tmp_path / "run", progress=False)


def test_nan_features_stop_training_naming_the_rows(digit_features, tmp_path):
    """The cache refuses NaN on the way in; a damaged shard can still hold some. te train names the rows."""
    records, classes = digit_records()
    fill_cache(tmp_path / "cache", digit_features[0], stored="fp32", records=records, class_names=classes)
    victim = next(r for r in records if r.split == "val")
    with FeatureCache.open(tmp_path / "cache", create=False) as cache:
        space = cache.open_space(cache.spaces()[0].id)
        where = space.locate([victim.key])
        shard = cache.shard_path(space.id, int(where.shard[0]))
    with open(shard, "r+b") as f:  # damaged bytes: a float32 NaN where row `victim` starts
        f.seek(HEADER_BYTES + int(where.row[0]) * 1280 * 4)
        f.write(bytes([0x00, 0x00, 0xC0, 0x7F]))
    with pytest.raises(CacheError, match=f"1 feature row\\(s\\) .* NaN or inf.*Keys: {victim.key}"):
        train(tmp_path / "cache", out=tmp_path / "run", progress=False)
    _nothing_written(tmp_path)
    with pytest.raises(CacheError, match=victim.key):  # streamed, the check is the same
        train(tmp_path / "cache", out=tmp_path / "run", memory_budget=1, progress=False)
    _nothing_written(tmp_path)


def test_an_out_holding_another_run_is_refused_unless_overwrite(digit_cache, tmp_path):
    first = train(digit_cache, head="knn", out=tmp_path / "run", progress=False)
    before = (first.run / RUN_JSON).read_bytes()
    with pytest.raises(UsageError, match="already holds a run; pass --overwrite"):
        train(digit_cache, head="linear", out=tmp_path / "run", progress=False)
    assert (first.run / RUN_JSON).read_bytes() == before
    again = train(digit_cache, head="linear", out=tmp_path / "run", overwrite=True, progress=False)
    assert again.metrics["head"] == "linear" and b'"linear"' in (again.run / RUN_JSON).read_bytes()


def test_bad_options_are_usage_errors_before_any_work(digit_cache, tmp_path):
    with pytest.raises(UsageError, match="unknown head 'lineer'.*linear"):
        train(digit_cache, head="lineer", out=tmp_path / "run", progress=False)
    with pytest.raises(UsageError, match="has no option.*depth"):
        train(digit_cache, head="mlp", options={"depth": 3}, out=tmp_path / "run", progress=False)
    with pytest.raises(UsageError, match="--weight-decay and --sweep"):
        train(digit_cache, weight_decay=1e-3, sweep=True, out=tmp_path / "run", progress=False)
    _nothing_written(tmp_path)
