"""te's built-in backbones: torchvision classification models with the classifier removed.

Registered through the `transfer_engine.backbones` entry point `torchvision` in pyproject.toml, exactly
like a third-party plugin. Preprocessing comes from torchvision's own weights enums
(`ResNet50_Weights.IMAGENET1K_V2.transforms`), read when a backbone is used. The weights' names and the
default are written in the table below instead of read from those enums when the specs are listed:
importing `torchvision.models` pulls in `torch._dynamo`, seconds of start-up for every te command that
lists the backbones, a plugin's included (docs/plugins.md). tests/backbones/test_torchvision_zoo.py
compares the table with torchvision's enums, so a torchvision upgrade that changes them fails a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from transfer_engine.backbones.spec import BackboneSpec, PreprocessSpec


def _replace(attr: str) -> Callable[[nn.Module], nn.Module]:
    """Replace `model.<attr>` (a dotted path; ints index Sequentials) by Identity."""

    def strip(model: nn.Module) -> nn.Module:
        *parents, last = attr.split(".")
        owner = model
        for part in parents:
            owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
        if last.isdigit():
            owner[int(last)] = nn.Identity()
        else:
            setattr(owner, last, nn.Identity())
        return model

    return strip


@dataclass(frozen=True)
class _Entry:
    feature_dim: int
    classifier: str  # the module replaced by Identity; its state-dict keys start with classifier + "."
    weights: tuple[str, ...] = ("IMAGENET1K_V1",)  # torchvision's weights enum, in its order
    default: str = "IMAGENET1K_V1"  # its DEFAULT


_V1_V2 = ("IMAGENET1K_V1", "IMAGENET1K_V2")


# The pooled features are what feeds the final Linear layer of each model.
_ZOO: dict[str, _Entry] = {
    "resnet18": _Entry(512, "fc"),
    "resnet34": _Entry(512, "fc"),
    "resnet50": _Entry(2048, "fc", _V1_V2, "IMAGENET1K_V2"),
    "resnet101": _Entry(2048, "fc", _V1_V2, "IMAGENET1K_V2"),
    "resnet152": _Entry(2048, "fc", _V1_V2, "IMAGENET1K_V2"),
    "wide_resnet50_2": _Entry(2048, "fc", _V1_V2, "IMAGENET1K_V2"),
    "efficientnet_b0": _Entry(1280, "classifier"),
    "efficientnet_b3": _Entry(1536, "classifier"),
    "efficientnet_v2_s": _Entry(1280, "classifier"),
    "mobilenet_v3_small": _Entry(576, "classifier"),
    "mobilenet_v3_large": _Entry(960, "classifier", _V1_V2, "IMAGENET1K_V2"),
    "convnext_tiny": _Entry(768, "classifier.2"),  # keeps the LayerNorm2d + Flatten before the Linear
    "convnext_small": _Entry(768, "classifier.2"),
    "regnet_y_800mf": _Entry(784, "fc", _V1_V2, "IMAGENET1K_V2"),
    "regnet_y_1_6gf": _Entry(888, "fc", _V1_V2, "IMAGENET1K_V2"),
    "vit_b_16": _Entry(768, "heads", ("IMAGENET1K_V1", "IMAGENET1K_SWAG_E2E_V1", "IMAGENET1K_SWAG_LINEAR_V1")),
    # (vit: the class token after the final LayerNorm)
    "vit_b_32": _Entry(768, "heads"),
    "swin_t": _Entry(768, "head"),
}


def _weights_enum(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name)


def _preprocess_of(name: str) -> Callable[[str | None], PreprocessSpec]:
    def preprocess(weights: str | None) -> PreprocessSpec:
        weights_enum = _weights_enum(name)
        member = weights_enum[weights] if weights else weights_enum.DEFAULT
        preset = member.transforms()  # torchvision's ImageClassification: the truth for these weights
        return PreprocessSpec(
            crop_size=int(preset.crop_size[0]),
            resize_size=int(preset.resize_size[0]),
            interpolation=preset.interpolation.value,
            mean=tuple(preset.mean),
            std=tuple(preset.std),
        )

    return preprocess


def _builder(name: str, entry: _Entry) -> Callable[[str | None], nn.Module]:
    strip = _replace(entry.classifier)

    def build(weights: str | None) -> nn.Module:
        from torchvision.models import get_model

        model = get_model(name, weights=_weights_enum(name)[weights] if weights else None)
        return strip(model).eval()

    return build


def _spec(name: str, entry: _Entry) -> BackboneSpec:
    return BackboneSpec(
        name=name,
        feature_dim=entry.feature_dim,
        build=_builder(name, entry),
        preprocess=_preprocess_of(name),
        weights=entry.weights,
        default_weights=entry.default,
        classifier_prefixes=(entry.classifier + ".",),
        description=f"torchvision {name}, pooled features before the classifier",
    )


def backbones() -> list[BackboneSpec]:
    """The entry point: one spec per model in the table (cheap: no model is built here)."""
    return [_spec(name, entry) for name, entry in _ZOO.items()]


__all__ = ["backbones"]
