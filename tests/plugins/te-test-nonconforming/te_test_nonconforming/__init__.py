"""Loads and lists fine; `te plugins check` must find what is wrong by building the models.

- backbone `wrong_dim_cnn` declares feature_dim=8, but its model returns 12 features per image;
- head `forgetful_head` keeps its class offsets in a plain tensor attribute, outside its state dict,
  so a head saved as safetensors and loaded again computes other logits.
"""

from transfer_engine.backbones import BackboneSpec, PreprocessSpec
from transfer_engine.heads import HeadSpec


def _build_wrong_dim(weights):
    from torch import nn

    return nn.Sequential(nn.Conv2d(3, 12, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _build_forgetful(in_features, num_classes):
    import torch
    from torch import nn

    class ForgetfulHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(in_features, num_classes)
            self.offsets = torch.randn(num_classes)  # not a buffer: safetensors never sees it

        def forward(self, x):
            return self.linear(x) + self.offsets

    return ForgetfulHead()


def backbones():
    return [
        BackboneSpec(
            name="wrong_dim_cnn",
            feature_dim=8,  # wrong on purpose: the model returns 12
            build=_build_wrong_dim,
            preprocess=PreprocessSpec(crop_size=32, resize_size=36),
            description="declares 8 features, returns 12",
        )
    ]


def heads():
    return [HeadSpec("forgetful_head", _build_forgetful, description="state outside its state dict")]
