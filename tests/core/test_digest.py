"""One weights digest: the rule the feature cache's space ids were computed with, used by the backbones
(what a space and a run record) and by fine-tuning under torchrun (whether the ranks ended in step)."""

from __future__ import annotations

import torch

from transfer_engine.backbones.spec import Backbone
from transfer_engine.core.digest import weights_digest

# The digest of `_module()` under the rule every existing cache's space ids rest on (computed with the
# backbone's own hashing before the rule moved to core/digest.py): a change here would orphan those caches.
KNOWN = "736d3a25eb5435dde2aa580fc1097d8023e5067e12fe4d7342112d496196484a"


def _module() -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        for i, p in enumerate(net.parameters()):
            p.copy_(torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) / (i + 2))
    return net


def test_the_digest_of_known_weights_is_the_one_existing_caches_were_built_with():
    assert weights_digest(_module()) == KNOWN


def test_a_backbone_reports_the_same_digest():
    assert Backbone(spec=None, model=_module(), weights="none", preprocess=None).weights_digest == KNOWN


def test_the_digest_follows_the_weights_not_the_order_of_the_state_dict():
    net = _module()
    changed = _module()
    with torch.no_grad():
        changed[0].bias[0] += 1
    assert weights_digest(changed) != weights_digest(net)
    reordered = torch.nn.Module()
    reordered.add_module("1", net[1])
    reordered.add_module("0", net[0])
    assert list(reordered.state_dict())[0] == "1.weight"
    assert weights_digest(reordered) == KNOWN
