"""te's built-in heads: each maps features to logits and rejects options it does not have."""

from __future__ import annotations

import pytest
import torch

from transfer_engine.errors import UsageError
from transfer_engine.heads import create_head, get_head_spec, list_heads


@pytest.mark.parametrize("name", ["linear", "mlp", "cosine"])
def test_head_maps_features_to_logits_and_learns(name):
    torch.manual_seed(0)
    head = create_head(name, in_features=16, num_classes=3)
    x = torch.randn(30, 16)
    y = x[:, :3].argmax(1)  # a learnable rule
    opt = torch.optim.Adam(head.parameters(), lr=0.05)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(head(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert head(x).shape == (30, 3)
    assert loss.item() < first / 2


def test_options_have_defaults_and_can_be_overridden():
    assert get_head_spec("mlp").options == {"hidden": 512, "dropout": 0.2}
    mlp = create_head("mlp", 8, 2, hidden=4)
    assert mlp[0].out_features == 4


def test_unknown_option_and_bad_sizes_are_usage_errors():
    with pytest.raises(UsageError, match="has no option.*hiden.*accepts: hidden, dropout"):
        create_head("mlp", 8, 2, hiden=4)
    with pytest.raises(UsageError, match="num_classes > 0"):
        create_head("linear", 8, 0)


def test_builtin_heads_are_listed():
    assert {"linear", "mlp", "cosine"} <= set(list_heads())
