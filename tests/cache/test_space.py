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
    space = FeatureSpace(**bb.space_fields(), stored="fp16")
    assert (space.backbone, space.dim, space.stored) == ("resnet18", 512, "fp16")
    assert space.weights_digest == bb.weights_digest and space.transform == bb.preprocess.to_dict()
    other_seed = create_backbone("resnet18", weights="none", seed=1)
    assert FeatureSpace(**other_seed.space_fields(), stored="fp16").id != space.id


# Space ids as te computed them before the cache stopped importing backbones/ (issue 36): existing caches
# hold their rows under these ids, so a change here would orphan them.
BASE_ID = "75e0553cc4f1496f9ec77672b6fa082c53df349650e2f8eb0fdcec8e7c34bd91"
LITE0_DIGEST = "753c7cf4f2cf40a406ab1d18966d264a43023f5bf31d3d3b7ed5007d6307a418"
LITE0_IDS = {("int8", "fp32"): "328386c159825eaf17db1d668a12a660c21f89ae146d6fe8b62f455a2e0126c8",
             ("fp16", "fp32"): "e1ec985cead024b0bd01deeb70091d8bc2dee8f3ef54f9c850571e1e91fb9625",
             ("int8", "bf16"): "58dab9920de5fd7197d573a3d0395afa7b7109623c46d320ed1997162f5012fa"}


def test_a_space_keeps_the_id_existing_caches_were_built_under():
    assert FeatureSpace(**BASE).id == BASE_ID


def test_the_space_of_a_known_backbone_keeps_the_id_existing_caches_were_built_under():
    from transfer_engine.backbones import create_backbone, list_backbones

    if "efficientnet_lite0" not in list_backbones():
        pytest.skip("the te-efficientnet-lite plugin is not installed")
    bb = create_backbone("efficientnet_lite0")
    assert bb.weights_digest == LITE0_DIGEST
    for (stored, precision), known in LITE0_IDS.items():
        assert FeatureSpace(**bb.space_fields(), stored=stored, precision=precision).id == known, (stored, precision)


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
