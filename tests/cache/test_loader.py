"""The minibatch loader head training uses: every row once per epoch, seeded shuffles, labels aligned."""

from __future__ import annotations

import pytest
import torch

from transfer_engine.cache import Record, content_key
from transfer_engine.errors import UsageError

N = 103


@pytest.fixture
def labelled(new_cache, wp):
    cache = new_cache(max_shard_bytes=40 * (wp.DIM + 4))  # three shards
    space = cache.space(wp.space_config(stored="fp32"))
    keys = [content_key(f"img{i}".encode()) for i in range(N)]
    space.append(keys, wp.features_of(range(N)))
    cache.put_dataset("d", [Record(f"{i}.png", k, i % 4, "train" if i % 5 else "val") for i, k in enumerate(keys)],
                      ["a", "b", "c", "d"])
    return space, keys


def test_an_epoch_yields_every_row_once_with_its_label(labelled, wp):
    space, _ = labelled
    loader = space.batches(dataset="d", split="train", batch_size=16, seed=3)
    train = [i for i in range(N) if i % 5]
    seen = []
    for batch in loader:
        rows = [train[j] for j in batch.index.tolist()]
        assert torch.equal(batch.features, wp.features_of(rows))
        assert batch.labels.tolist() == [i % 4 for i in rows]
        seen += rows
    assert sorted(seen) == train and len(loader) == -(-len(train) // 16)


def test_shuffles_are_seeded_and_differ_between_epochs(labelled):
    space, keys = labelled
    first = space.batches(keys, batch_size=N, seed=7)
    epoch0, epoch1 = (next(iter(first)).index.tolist() for _ in range(2))
    again = next(iter(space.batches(keys, batch_size=N, seed=7))).index.tolist()
    assert epoch0 == again and epoch0 != epoch1
    in_order = next(iter(space.batches(keys, batch_size=N, shuffle=False)))
    assert in_order.index.tolist() == list(range(N)) and in_order.labels is None


def test_drop_last_and_stopping_early(labelled):
    space, keys = labelled
    loader = space.batches(keys, batch_size=10, drop_last=True)
    assert len(loader) == 10 and all(b.features.shape == (10, space.dim) for b in loader)
    for i, _ in enumerate(loader):  # leaving mid-epoch stops the prefetch thread cleanly
        if i == 2:
            break
    assert sum(1 for _ in loader) == 10


def test_pin_memory_without_cuda_warns_and_still_works(labelled):
    space, keys = labelled
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.warns(UserWarning, match="pin_memory needs CUDA"):
        loader = space.batches(keys, batch_size=50, pin_memory=True)
    assert sum(b.features.shape[0] for b in loader) == N


@pytest.mark.cuda
def test_batches_land_on_the_gpu_from_pinned_memory(labelled, wp):
    space, _ = labelled
    for batch in space.batches(dataset="d", batch_size=32, pin_memory=True, device="cuda"):
        assert batch.features.is_cuda and batch.labels.is_cuda
        assert torch.equal(batch.features.cpu(), wp.features_of(batch.index.tolist()))


def test_asking_for_a_missing_split_or_nothing_is_a_usage_error(labelled):
    space, _ = labelled
    with pytest.raises(UsageError, match="no records in split 'test'"):
        space.batches(dataset="d", split="test")
    with pytest.raises(UsageError, match="needs keys or a dataset"):
        space.batches()
