"""te's built-in backbones: torchvision classification models with the classifier removed.

Registered through the `transfer_engine.backbones` entry point `torchvision` in pyproject.toml, exactly
like a third-party plugin. Weights names, default weights and preprocessing come from torchvision's own
weights enums (`ResNet50_Weights.IMAGENET1K_V2.transforms`), so they cannot drift from torchvision.
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


# The pooled features are what feeds the final Linear layer of each model.
_ZOO: dict[str, _Entry] = {
    "resnet18": _Entry(512, "fc"),
    "resnet34": _Entry(512, "fc"),
    "resnet50": _Entry(2048, "fc"),
    "resnet101": _Entry(2048, "fc"),
    "resnet152": _Entry(2048, "fc"),
    "wide_resnet50_2": _Entry(2048, "fc"),
    "efficientnet_b0": _Entry(1280, "classifier"),
    "efficientnet_b3": _Entry(1536, "classifier"),
    "efficientnet_v2_s": _Entry(1280, "classifier"),
    "mobilenet_v3_small": _Entry(576, "classifier"),
    "mobilenet_v3_large": _Entry(960, "classifier"),
    "convnext_tiny": _Entry(768, "classifier.2"),  # keeps the LayerNorm2d + Flatten before the Linear
    "convnext_small": _Entry(768, "classifier.2"),
    "regnet_y_800mf": _Entry(784, "fc"),
    "regnet_y_1_6gf": _Entry(888, "fc"),
    "vit_b_16": _Entry(768, "heads"),  # the class token after the final LayerNorm
    "vit_b_32": _Entry(768, "heads"),
    "swin_t": _Entry(768, "head"),
}


def _preprocess_of(weights_enum) -> Callable[[str | None], PreprocessSpec]:
    def preprocess(weights: str | None) -> PreprocessSpec:
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


def _builder(name: str, entry: _Entry, weights_enum) -> Callable[[str | None], nn.Module]:
    strip = _replace(entry.classifier)

    def build(weights: str | None) -> nn.Module:
        from torchvision.models import get_model

        model = get_model(name, weights=weights_enum[weights] if weights else None)
        return strip(model).eval()

    return build


def _spec(name: str, entry: _Entry) -> BackboneSpec:
    from torchvision.models import get_model_weights

    weights_enum = get_model_weights(name)
    names = tuple(member.name for member in weights_enum)
    default = weights_enum.DEFAULT.name
    return BackboneSpec(
        name=name,
        feature_dim=entry.feature_dim,
        build=_builder(name, entry, weights_enum),
        preprocess=_preprocess_of(weights_enum),
        weights=names,
        default_weights=default,
        classifier_prefixes=(entry.classifier + ".",),
        description=f"torchvision {name}, pooled features before the classifier",
    )


def backbones() -> list[BackboneSpec]:
    """The entry point: one spec per model in the table (cheap: no model is built here)."""
    return [_spec(name, entry) for name, entry in _ZOO.items()]


__all__ = ["backbones"]
