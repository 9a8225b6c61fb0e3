"""timm's model zoo as te backbones: `timm/<model_name>` for every model timm can pool features from.

te finds this plugin through the entry point `timm = "te_timm:backbones"` in the group
`transfer_engine.backbones`. Each timm architecture becomes one backbone:

- name: `timm/<architecture>` (e.g. `timm/resnet50`), so it never clashes with te's torchvision names;
- feature_dim: the width of timm's pooled pre-logits features (`num_classes=0`), what te extracts;
- weights: the architecture's pretrained tags (`a1_in1k`, `tv_in1k`, ...; the first is timm's default),
  each with the preprocessing of its `pretrained_cfg`; `--weights resnet50.a1_in1k` works too;
- classifier_prefixes: the cfg's classifier modules, so a full timm checkpoint loads with `--weights PATH`.

Listing is cheap: this module reads a JSON index (see `te_timm.index`) and imports neither timm nor
torch; a model is built, and timm imported, only when one is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transfer_engine.backbones.spec import BackboneSpec, PreprocessSpec

if TYPE_CHECKING:  # torch is imported only when a model is built
    from torch import nn

__version__ = "0.1.0"

PREFIX = "timm/"


class TimmPreprocess:
    """`preprocess(weights)` of one architecture: its tags' preprocessing from their pretrained_cfg."""

    def __init__(self, arch: str, entry: dict[str, Any]) -> None:
        self.arch = arch
        self._fields = dict(entry["weights"])
        self._random = entry["random_preprocess"]

    def __call__(self, weights: str | None) -> PreprocessSpec:
        crop, resize, interpolation, mean, std = self._fields.get(weights or "", self._random)
        return PreprocessSpec(crop_size=crop, resize_size=resize, interpolation=interpolation,
                              mean=tuple(mean), std=tuple(std))

    def __repr__(self) -> str:
        return f"TimmPreprocess({self.arch!r})"


class TimmBuilder:
    """`build(weights)` of one architecture: timm.create_model(num_classes=0), weights from the hub cache."""

    def __init__(self, arch: str) -> None:
        self.arch = arch

    def __call__(self, weights: str | None) -> "nn.Module":
        from te_timm._build import build

        return build(self.arch, weights)

    def __repr__(self) -> str:
        return f"TimmBuilder({self.arch!r})"


def spec_for(arch: str, entry: dict[str, Any]) -> BackboneSpec:
    """The te backbone for one index entry (see `te_timm.index.arch_entry`)."""
    tags = tuple(tag for tag, _ in entry["weights"])  # timm's order: the first is its default
    skipped = len(entry["unsupported"])
    note = f", {skipped} tag(s) left out (preprocessing te cannot match)" if skipped else ""
    return BackboneSpec(
        name=PREFIX + arch,
        feature_dim=entry["feature_dim"],
        build=TimmBuilder(arch),
        preprocess=TimmPreprocess(arch, entry),
        weights=tags,
        default_weights=tags[0] if tags else None,
        classifier_prefixes=tuple(c + "." for c in entry["classifier"]),
        description=f"timm {arch}: pooled pre-logits features, {len(tags)} pretrained tag(s){note}",
    )


def backbones() -> list[BackboneSpec]:
    """The entry point: one spec per indexed timm model (no model is built, timm is not imported).

    Returns:
        The specs, in the index's order.
    """
    from te_timm.index import load_index

    return [spec_for(arch, entry) for arch, entry in load_index()["models"].items()]


__all__ = ["PREFIX", "TimmBuilder", "TimmPreprocess", "backbones", "spec_for"]
