"""The store through its Python API: round trips per stored dtype, de-duplication, data sets, bad input."""

from __future__ import annotations

import pytest
import torch

from transfer_engine.cache import FeatureCache, Record
from transfer_engine.errors import CacheError, CorruptCacheError, NotACacheError, UsageError

from .conftest import int8_close, keys_of


def test_fp32_rows_come_back_exactly(new_cache, wp):
    space = new_cache().space(wp.space_config(dim=33, stored="fp32"))
    x = torch.randn(50, 33) * 100
    space.append(keys_of(50), x)
    assert torch.equal(space.gather(keys_of(50)), x)


def test_fp16_rows_come_back_rounded_to_fp16(new_cache, wp):
    space = new_cache().space(wp.space_config(dim=33, stored="fp16"))
    x = torch.randn(50, 33) * 100
    space.append(keys_of(50), x)
    assert torch.equal(space.gather(keys_of(50)), x.half().float())


def test_int8_rows_come_back_within_half_a_step_with_a_quarter_of_the_bytes(new_cache, wp):
    cache = new_cache()
    int8 = cache.space(wp.space_config(dim=2048, stored="int8"))
    fp32 = cache.space(wp.space_config(dim=2048, stored="fp32"))
    x = torch.randn(64, 2048) * (1 - torch.rand(64, 1)) * 10  # row scales in (0, 10]: no all-zero row
    int8.append(keys_of(64), x)
    fp32.append(keys_of(64), x)
    got = int8.gather(keys_of(64))
    assert int8_close(got, x)
    assert torch.nn.functional.cosine_similarity(got, x, dim=1).min() >= 0.999
    sizes = {s["stored"]: s["bytes"] for s in cache.info()["spaces"]}
    assert 3.9 < sizes["fp32"] / sizes["int8"] < 4.0


def test_an_int8_value_near_a_tie_comes_back_within_the_promise_not_within_a_fixed_1e6(new_cache, wp):
    # Found by running the test above unseeded (it failed 0.4-0.7% of draws): x / step is -71.4999947
    # (step = amax / 127), but x * fl(127 / amax) rounds to -71.5 in float32 and half-to-even takes -72,
    # so the value comes back 2e-6 past half a step. The quantizer's promise allows that (INT8_ROUNDING).
    space = new_cache().space(wp.space_config(dim=2048, stored="int8"))
    x = torch.zeros(1, 2048)
    x[0, :2] = torch.tensor([float.fromhex("0x1.caa968p+4"), float.fromhex("-0x1.023912p+4")])  # 28.67, -16.14
    space.append(keys_of(1), x)
    got = space.gather(keys_of(1))
    step = x.abs().max() / 127
    assert got[0, 1] == -72 * step  # the farther code: -71 * step is nearer x
    assert abs(float(got[0, 1]) - float(x[0, 1])) > float(step) / 2 + 1e-6
    assert int8_close(got, x)


def test_append_skips_keys_already_present_and_repeated_in_the_batch(new_cache, wp):
    space = new_cache().space(wp.space_config())
    x = wp.features_of(range(10))
    assert space.append(keys_of(6), x[:6]) == 6
    keys = keys_of(10) + keys_of(2)                      # 6 present, 4 new, 2 repeated
    features = torch.cat([x, x[:2]]) + 1000              # would be visible if a present row were overwritten
    features[6:10] = x[6:10]
    assert space.append(keys, features) == 4
    assert len(space) == 10
    assert torch.allclose(space.gather(keys_of(10)), x, atol=0.1)
    assert space.contains(keys_of(11)) == [True] * 10 + [False]


def test_gather_follows_the_asked_order_across_shards(new_cache, wp):
    cache = new_cache(max_shard_bytes=7 * (wp.DIM + 4))  # 7 rows a shard
    space = cache.space(wp.space_config())
    for start in range(0, 40, 9):
        space.append(keys_of(9, start), wp.features_of(range(start, start + 9)))
    assert cache.info()["spaces"][0]["shards"] == 7
    order = [31, 0, 7, 7, 39, 12, 3]
    got = space.gather([keys_of(1, i)[0] for i in order])
    assert torch.allclose(got, wp.features_of(order), atol=0.1)
    assert space.gather([]).shape == (0, wp.DIM)
    assert space.append([], torch.empty(0, wp.DIM)) == 0


def test_rows_persist_and_the_same_space_is_found_again(tmp_path, wp):
    with FeatureCache.open(tmp_path / "c") as cache:
        cache.space(wp.space_config()).append(keys_of(5), wp.features_of(range(5)))
    with FeatureCache.open(tmp_path / "c") as cache:
        space = cache.space(wp.space_config())
        assert len(space) == 5 and len(cache.spaces()) == 1
        assert torch.allclose(space.gather(keys_of(5)), wp.features_of(range(5)), atol=0.1)
        assert cache.open_space(space.id[:10]).id == space.id


def test_spaces_never_mix_rows(new_cache, wp):
    cache = new_cache()
    a = cache.space(wp.space_config(stored="fp32"))
    b = cache.space(wp.space_config(stored="fp16"))
    a.append(keys_of(3), torch.ones(3, wp.DIM))
    assert b.contains(keys_of(3)) == [False] * 3
    b.append(keys_of(3), torch.zeros(3, wp.DIM))
    assert a.gather(keys_of(3)).eq(1).all() and b.gather(keys_of(3)).eq(0).all()


def test_nan_or_inf_features_are_refused_naming_their_keys(new_cache, wp):
    space = new_cache().space(wp.space_config())
    x = wp.features_of(range(4))
    x[1, 5] = float("nan")
    x[3, 0] = float("inf")
    keys = keys_of(4)
    with pytest.raises(CacheError, match="2 feature rows hold NaN or inf, nothing was stored") as err:
        space.append(keys, x)
    assert keys[1] in str(err.value) and keys[3] in str(err.value) and keys[0] not in str(err.value)
    assert len(space) == 0


def test_fp16_overflow_is_refused_rather_than_stored_as_inf(new_cache, wp):
    space = new_cache().space(wp.space_config(stored="fp16"))
    x = torch.zeros(2, wp.DIM)
    x[0, 0] = 1e6
    with pytest.raises(CacheError, match="beyond fp16's range"):
        space.append(keys_of(2), x)


@pytest.mark.parametrize("make, message", [
    (lambda wp: (keys_of(2), torch.zeros(2, wp.DIM + 1)), r"must be \[N, 48\], got \[2, 49\]"),
    (lambda wp: (keys_of(3), torch.zeros(2, wp.DIM)), "got 3 keys for 2 feature rows"),
    (lambda wp: (keys_of(2), torch.zeros(2, wp.DIM, dtype=torch.int64)), "floating-point torch.Tensor"),
    (lambda wp: (["images/cat.jpg", *keys_of(1)], torch.zeros(2, wp.DIM)), "must be a lowercase hex digest"),
    (lambda wp: (keys_of(1)[0], torch.zeros(1, wp.DIM)), "got one string"),
])
def test_wrong_shapes_and_keys_are_usage_errors(new_cache, wp, make, message):
    space = new_cache().space(wp.space_config())
    with pytest.raises(UsageError, match=message):
        space.append(*make(wp))


def test_unknown_stored_dtype_is_a_usage_error(new_cache):
    with pytest.raises(UsageError, match="unknown stored dtype 'bf16'; expected one of fp32, fp16, int8"):
        new_cache().space(backbone="b", weights_digest="w", transform={}, dim=4, stored="bf16")


def test_gathering_keys_the_space_lacks_names_them(new_cache, wp):
    space = new_cache().space(wp.space_config())
    space.append(keys_of(2), wp.features_of(range(2)))
    with pytest.raises(UsageError, match=rf"1 of 3 keys have no row in space {space.id[:12]}.*{keys_of(1, 7)[0][:16]}"):
        space.gather(keys_of(2) + keys_of(1, 7))


def test_data_sets_round_trip_and_replace(new_cache):
    cache = new_cache()
    records = [Record(f"d/{i}.png", k, i % 3, "train" if i < 4 else "val") for i, k in enumerate(keys_of(6))]
    cache.put_dataset("digits", records, ["zero", "one", "two"])
    ds = cache.dataset("digits")
    assert ds.records == records and ds.class_names == ["zero", "one", "two"]
    assert ds.split_counts() == {"train": 4, "val": 2} and ds.keys("val") == keys_of(2, 4)
    assert ds.label_counts() == {0: 2, 1: 2, 2: 2}
    cache.put_dataset("digits", records[:2], ["zero", "one", "two"])
    assert len(cache.dataset("digits")) == 2 and cache.datasets() == ["digits"]


def test_data_sets_stream_in_and_a_bad_record_keeps_the_previous_one(new_cache):
    cache = new_cache()
    keys = keys_of(5)
    stored = cache.put_dataset("d", (Record(f"{i}.png", k, 0, "train") for i, k in enumerate(keys)), ["x"])
    assert stored == 5

    def with_a_bad_label():  # a generator: put_dataset validates and writes each record as it comes
        yield from (Record(f"{i}.png", k, 0, "train") for i, k in enumerate(keys[:3]))
        yield Record("bad.png", keys[3], 4, "train")

    with pytest.raises(UsageError, match=r"record 3 \(bad.png\) has label 4"):
        cache.put_dataset("d", with_a_bad_label(), ["x"])
    assert cache.dataset("d").keys() == keys  # one transaction: the old data set is intact


def test_data_set_mistakes_are_usage_errors(new_cache):
    cache = new_cache()
    cache.put_dataset("a", [("x.png", keys_of(1)[0], None, "test")], [])
    with pytest.raises(UsageError, match="has no data set 'b'; it has: a"):
        cache.dataset("b")
    with pytest.raises(UsageError, match=r"record 0 \(x.png\) has label 5; expected an int in 0..1"):
        cache.put_dataset("c", [("x.png", keys_of(1)[0], 5, "train")], ["cat", "dog"])


def test_opening_without_create_never_makes_a_cache(tmp_path):
    with pytest.raises(NotACacheError, match="does not exist"):
        FeatureCache.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "plain").mkdir()
    with pytest.raises(NotACacheError, match="is not a te feature cache"):
        FeatureCache.open(tmp_path / "plain", create=False)
    assert list((tmp_path / "plain").iterdir()) == []


def test_a_folder_holding_other_files_is_not_turned_into_a_cache(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    with pytest.raises(NotACacheError, match="is not empty and not a te feature cache"):
        FeatureCache.open(tmp_path / "photos")


def test_a_cache_whose_index_is_gone_says_so(tmp_path, wp):
    with FeatureCache.open(tmp_path / "c") as cache:
        cache.space(wp.space_config())
    (tmp_path / "c" / "index.sqlite").unlink()
    with pytest.raises(CorruptCacheError, match="cannot open the index .*index.sqlite"):
        FeatureCache.open(tmp_path / "c", create=False)
