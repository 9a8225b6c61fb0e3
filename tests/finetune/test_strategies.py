"""Strategies do what they say: frozen parameters and BatchNorm statistics stay bit for bit, unfrozen ones
train, groups unfreeze from the top at their milestones, and earlier layers get smaller learning rates."""

from __future__ import annotations

import pytest
import torch

from transfer_engine.backbones import create_backbone
from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune
from transfer_engine.finetune.strategies import backbone_blocks, make_strategy, norm_buffers, param_groups
from transfer_engine.heads import create_head

BACKBONE = "mobilenet_v3_small"  # BatchNorm everywhere, 13 blocks, fast at 32 px


def _fine_tune(tmp_path, **kwargs) -> dict[int, dict[str, torch.Tensor]]:
    """Fine-tune on 120 digits at 32 px; returns the state dict after each epoch (0: the start)."""
    snaps = {0: {f"backbone.{k}": v.clone() for k, v in
                 create_backbone(BACKBONE, weights="none", seed=0).model.state_dict().items()}}
    torch.manual_seed(0)  # the new head is initialized from the seed, after the backbone
    snaps[0].update({f"head.{k}": v for k, v in create_head("linear", 576, 10).state_dict().items()})

    def snapshot(epoch, model):
        snaps[epoch] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    finetune(tmp_path / "run", backbone=BACKBONE, weights="none", data="builtin:digits", head="linear",
             input_size=32, limit=120, batch_size=16, augment="crop", progress=False, on_epoch_end=snapshot,
             **kwargs)
    return snaps


def _blocks():
    return backbone_blocks(create_backbone(BACKBONE, weights="none").model)


def _changed(a: dict, b: dict, keys) -> list[bool]:
    return [not torch.equal(a[k], b[k]) for k in keys]


def _bn_keys() -> list[str]:
    return [f"backbone.{k}" for k, _ in norm_buffers(create_backbone(BACKBONE, weights="none").model)]


def _block_keys(block) -> list[str]:
    return [f"backbone.{name}" for name, _ in block.params]


def _every_block_trained(before: dict, after: dict, blocks) -> bool:
    """Each block has weights that moved (a weight whose gradient is exactly zero, such as a BatchNorm
    scale behind a dead activation, stays put under AdamW and proves nothing either way)."""
    return all(any(_changed(before, after, _block_keys(b))) for b in blocks)


def test_freeze_trains_the_head_only_and_batchnorm_statistics_do_not_move(tmp_path, one_thread):
    snaps = _fine_tune(tmp_path, strategy="freeze", epochs=1)
    backbone = [k for k in snaps[0] if k.startswith("backbone.")]
    assert len(backbone) > 100 and not any(_changed(snaps[0], snaps[1], backbone))  # weights and stats
    assert all(_changed(snaps[0], snaps[1], ["head.weight", "head.bias"]))


def test_freeze_unfreeze_trains_the_backbone_only_after_the_unfreeze_epoch(tmp_path, one_thread):
    snaps = _fine_tune(tmp_path, strategy="freeze_unfreeze", unfreeze_epoch=1, epochs=2, freeze_bn=False)
    weights = [k for b in _blocks() for k in _block_keys(b)]
    assert not any(_changed(snaps[0], snaps[1], weights + _bn_keys()))
    assert _every_block_trained(snaps[1], snaps[2], _blocks())
    running = [k for k in _bn_keys() if k.endswith("running_mean")]
    assert all(_changed(snaps[1], snaps[2], running))  # statistics follow the data with --train-bn


def test_unfreeze_milestones_unfreezes_groups_from_the_top(tmp_path, one_thread):
    snaps = _fine_tune(tmp_path, strategy="unfreeze_milestones", milestones=(1, 2), epochs=3, freeze_bn=False)
    blocks = _blocks()
    plan = make_strategy("unfreeze_milestones", len(blocks), milestones=(1, 2))
    top = [k for b, s in zip(blocks, plan.start_epochs) if s == 1 for k in _block_keys(b)]
    bottom = [k for b, s in zip(blocks, plan.start_epochs) if s == 2 for k in _block_keys(b)]
    assert top and bottom and set(top).isdisjoint(bottom)
    assert plan.start_epochs[-1] == 1 and plan.start_epochs[0] == 2  # the top group is the last blocks
    assert not any(_changed(snaps[0], snaps[1], top + bottom))
    top_blocks = [b for b, s in zip(blocks, plan.start_epochs) if s == 1]
    assert _every_block_trained(snaps[1], snaps[2], top_blocks) and not any(_changed(snaps[1], snaps[2], bottom))
    bottom_bn = [k for k in _bn_keys() if k.rsplit(".", 1)[0] + ".weight" in bottom]
    assert bottom_bn and not any(_changed(snaps[1], snaps[2], bottom_bn))  # frozen block: stats stay too
    assert _every_block_trained(snaps[2], snaps[3], [b for b, s in zip(blocks, plan.start_epochs) if s == 2])


def test_freeze_bn_keeps_running_statistics_while_every_weight_trains(tmp_path, one_thread):
    snaps = _fine_tune(tmp_path, strategy="no_freeze", freeze_bn=True, epochs=1)
    assert not any(_changed(snaps[0], snaps[1], _bn_keys()))
    assert _every_block_trained(snaps[0], snaps[1], _blocks())
    bn_scales = [k.replace("running_mean", "weight") for k in _bn_keys() if k.endswith("running_mean")]
    assert sum(_changed(snaps[0], snaps[1], bn_scales)) > len(bn_scales) // 2  # BatchNorm's affine weights train


def test_layer_decay_gives_earlier_blocks_smaller_learning_rates():
    blocks = _blocks()
    head = create_head("linear", 576, 10)
    groups = param_groups(blocks, head, lr=1e-3, layer_decay=0.5, weight_decay=0.05)
    rate = {g["name"]: g["lr"] for g in groups}
    assert rate["head"] == 1e-3 and rate[blocks[-1].name] == 0.5e-3
    lrs = [rate[b.name] for b in blocks if b.name in rate]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-3 * 0.5 ** len(blocks))
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith(".no_decay"))
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(create_backbone(BACKBONE, weights="none").model.parameters())) + 2


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "vit_b_32"])
def test_blocks_cover_every_parameter_once_in_forward_order(name):
    model = create_backbone(name, weights="none").model
    blocks = backbone_blocks(model)
    names = [n for b in blocks for n, _ in b.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    assert len(names) == len(set(names)) and len(blocks) >= 4
    assert names == [n for n, _ in model.named_parameters()]  # registration (= forward) order


def test_milestones_that_do_not_fit_are_usage_errors():
    with pytest.raises(UsageError, match="needs --milestones"):
        make_strategy("unfreeze_milestones", 10)
    with pytest.raises(UsageError, match="increasing"):
        make_strategy("unfreeze_milestones", 10, milestones=(2, 1))
    with pytest.raises(UsageError, match="only 2"):
        make_strategy("unfreeze_milestones", 2, milestones=(1, 2, 3))
