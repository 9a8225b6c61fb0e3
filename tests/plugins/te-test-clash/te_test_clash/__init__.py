"""Provides a backbone named like te's built-in resnet50: te must refuse to guess."""

from transfer_engine.backbones import BackboneSpec


def _build(weights):
    from torch import nn

    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2048))


RESNET50 = BackboneSpec(name="resnet50", feature_dim=2048, build=_build, description="an impostor")
