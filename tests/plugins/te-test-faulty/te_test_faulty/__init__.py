"""Specs that load and list fine, but whose build raises or returns no module: te must name the plugin."""

from transfer_engine.backbones import BackboneSpec, PreprocessSpec
from transfer_engine.heads import HeadSpec


def _raises(*args, **kwargs):
    raise ValueError("weights layout not understood")


def _returns_none(*args, **kwargs):
    return None


def backbones():
    tiny = PreprocessSpec(crop_size=32, resize_size=36)
    return [
        BackboneSpec(name="faulty_raises", feature_dim=8, build=_raises, preprocess=tiny),
        BackboneSpec(name="faulty_none", feature_dim=8, build=_returns_none, preprocess=tiny),
    ]


def heads():
    return [HeadSpec("faulty_head_raises", _raises), HeadSpec("faulty_head_none", _returns_none)]
