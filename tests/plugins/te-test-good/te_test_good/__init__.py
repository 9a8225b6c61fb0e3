"""A well-behaved plugin: one tiny backbone and one head."""

from transfer_engine.backbones import BackboneSpec, PreprocessSpec
from transfer_engine.heads import HeadSpec


def _build_tiny(weights):
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _build_probe(in_features, num_classes, bias=True):
    from torch import nn

    return nn.Linear(in_features, num_classes, bias=bias)


def backbones():
    return [
        BackboneSpec(
            name="tiny_cnn",
            feature_dim=8,
            build=_build_tiny,
            preprocess=PreprocessSpec(crop_size=32, resize_size=36),
            description="a tiny CNN for tests",
        )
    ]


def heads():
    return [HeadSpec("centroid_probe", _build_probe, options={"bias": True}, description="a test head")]
