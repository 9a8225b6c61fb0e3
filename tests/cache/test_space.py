"""Feature spaces: any change to what makes a feature gives a new space; the same inputs, the same one."""

from __future__ import annotations

import dataclasses

import pytest

from transfer_engine.cache import FeatureSpace
from transfer_engine.errors import UsageError

BASE = dict(backbone="resnet50", weights_digest="ab" * 32,
            transform={"crop_size": 224, "resize_size": 256, "interpolation": "bilinear",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            dim=2048, stored="int8", pooling="avg", precision="fp32")

CHANGES = {
    "backbone": "resnet101",
    "weights_digest": "cd" * 32,
    "transform": {**BASE["transform"], "crop_size": 192},
    "dim": 1024,
    "stored": "fp16",
    "pooling": "max",
    "precision": "bf16",
    "format_version": 2,
}


def test_the_same_inputs_give_the_same_space_whatever_the_key_order():
    a = FeatureSpace(**BASE)
    b = FeatureSpace(**{**BASE, "transform": dict(reversed(list(BASE["transform"].items())))})
    assert a.id == b.id and a == b and hash(a) == hash(b)
    assert len(a.id) == 64


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_changing_any_input_gives_a_new_space(field):
    assert FeatureSpace(**{**BASE, field: CHANGES[field]}).id != FeatureSpace(**BASE).id


def test_every_hashed_input_is_covered_by_the_test_above():
    inputs = {f.name for f in dataclasses.fields(FeatureSpace) if f.init}
    assert inputs == set(CHANGES)


def test_tuples_and_lists_hash_alike_and_round_trip_through_dict():
    a = FeatureSpace(**{**BASE, "transform": {**BASE["transform"], "mean": (0.485, 0.456, 0.406)}})
    assert a.id == FeatureSpace(**BASE).id
    assert FeatureSpace.from_dict(a.to_dict()).id == a.id


def test_space_of_a_backbone_uses_its_weights_digest_and_transform():
    from transfer_engine.backbones import create_backbone

    bb = create_backbone("resnet18", weights="none", seed=0)
    space = FeatureSpace.of_backbone(bb, stored="fp16")
    assert (space.backbone, space.dim, space.stored) == ("resnet18", 512, "fp16")
    assert space.weights_digest == bb.weights_digest and space.transform == bb.preprocess.to_dict()
    other_seed = create_backbone("resnet18", weights="none", seed=1)
    assert FeatureSpace.of_backbone(other_seed, stored="fp16").id != space.id


@pytest.mark.parametrize("bad, message", [
    ({"stored": "int4"}, "unknown stored dtype 'int4'; expected one of fp32, fp16, int8"),
    ({"precision": "fp8"}, "unknown compute precision 'fp8'"),
    ({"dim": 0}, "dim must be a positive int, got 0"),
    ({"backbone": ""}, "backbone must be a non-empty name"),
    ({"transform": {"mean": float("nan")}}, "transform.mean must be finite"),
    ({"transform": {"f": object()}}, "transform.f must be JSON data"),
])
def test_bad_inputs_are_usage_errors_that_say_what_was_expected(bad, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FeatureSpace(**{**BASE, **bad})
