"""The k-NN head: votes of the nearest stored features, restored from a state dict of any size."""

from __future__ import annotations

import pytest
import torch

from transfer_engine.heads import create_head, get_head_spec


def _fitted(k=3, rows=60, dim=8, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=gen) * 3
    labels = torch.arange(rows) % classes
    features = centers[labels] + 0.1 * torch.randn(rows, dim, generator=gen)
    head = create_head("knn", dim, classes, k=k)
    get_head_spec("knn").fit(head, features, labels)
    return head, centers, features, labels


def test_knn_predicts_the_class_of_the_nearest_stored_features():
    head, centers, _, _ = _fitted()
    queries = centers * 5  # far along each class direction: cosine similarity ignores the length
    logits = head(queries)
    assert logits.shape == (3, 3)
    assert head(queries).argmax(1).tolist() == [0, 1, 2]
    assert torch.allclose(logits.exp().sum(1), torch.ones(3), atol=1e-5)  # softmax(logits) = the votes


def test_a_saved_knn_head_loads_into_a_fresh_one_of_unknown_size():
    head, centers, _, _ = _fitted(rows=60)
    fresh = create_head("knn", 8, 3, k=3)
    assert fresh.bank.shape == (0, 8)
    fresh.load_state_dict(head.state_dict())
    assert fresh.bank.shape == (60, 8)
    assert torch.equal(fresh(centers), head(centers))


def test_a_state_dict_of_another_feature_length_is_refused():
    head, _, _, _ = _fitted(dim=8)
    with pytest.raises(RuntimeError, match="size mismatch"):
        create_head("knn", 9, 3).load_state_dict(head.state_dict())


def test_an_unfitted_knn_head_says_so():
    with pytest.raises(RuntimeError, match="not fitted"):
        create_head("knn", 8, 3)(torch.randn(2, 8))


def test_k_larger_than_the_stored_rows_uses_them_all():
    head, centers, _, _ = _fitted(k=50, rows=6)
    assert head(centers).argmax(1).tolist() == [0, 1, 2]
