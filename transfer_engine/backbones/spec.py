"""What a backbone plugin declares (`BackboneSpec`, `PreprocessSpec`) and what te builds from it
(`Backbone`).

The preprocessing spec travels with the weights, as timm's PretrainedCfg does: the transform used for
extraction, fine-tuning and the ONNX graph is always built from it, so it cannot drift from what the
weights were trained with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Union

from transfer_engine.core.choices import RESAMPLERS
from transfer_engine.core import digest

if TYPE_CHECKING:  # torch is imported only when a model is built
    import torch

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessSpec:
    """How images must be prepared for a backbone's weights.

    Resize the shorter side to `resize_size` with `interpolation` (antialiased), center-crop to
    `crop_size`, scale to [0, 1], then normalize each channel with `mean` and `std`.

    Attributes:
        crop_size: side of the square the model sees (the input size is (3, crop_size, crop_size)).
        resize_size: shorter side after resizing, before the crop (>= crop_size).
        interpolation: "bilinear", "bicubic" or "nearest".
        mean, std: per-channel normalization of RGB values in [0, 1].
        resampler: what resizes: "pil" (the reference: PIL resamples the image, exactly as torchvision's
            weights transforms do) or "torch" (torch's antialiased resize of the uint8 tensor: the same
            filter, several times faster on camera-sized photos, pixels within a few levels of PIL's). It
            changes pixels, so it is part of the spec's identity: "torch" appears in `to_dict()` (and so
            in the feature space id and in every run and export made from it), "pil" does not, so specs
            from before the field keep their ids. Which one a run uses: `te extract --resampler`
            (transfer_engine.extract.resampler).
    """

    crop_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resampler: str = "pil"

    def __post_init__(self) -> None:
        if self.resampler not in RESAMPLERS:
            raise ValueError(f"resampler must be one of {RESAMPLERS}, got {self.resampler!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.resampler == "torch" and self.interpolation == "nearest":
            raise ValueError("resampler torch resizes bilinear or bicubic: its nearest picks other source pixels "
                             "than PIL's, so a nearest spec keeps resampler pil")
        if not (0 < self.crop_size <= self.resize_size):
            raise ValueError(f"need 0 < crop_size <= resize_size, got {self.crop_size} and {self.resize_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values each, std > 0")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(channels, height, width) of the tensor the model receives."""
        return (3, self.crop_size, self.crop_size)

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "mean": list(self.mean), "std": list(self.std)}
        if self.resampler == "pil":  # the reference is the absence of the field: ids from before it hold
            del out["resampler"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessSpec":
        return cls(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in data.items() if k != "input_size"})

    def transform(self) -> Callable[[Any], "torch.Tensor"]:
        """A torchvision transform: PIL image or uint8 CHW tensor -> normalized float CHW tensor.

        With resampler "pil", a PIL image is resized and cropped before it becomes a tensor, so PIL
        resamples it, exactly as torchvision's own weights transforms do. With "torch", the image (PIL or
        a uint8 tensor, on any device) becomes a uint8 tensor first and torch resizes it: the same
        antialiased filter, computed differently (pixels move by a few levels, features far less than
        the cache's bound: docs/extract.md, "Preprocessing").
        """
        from torchvision.transforms import v2

        modes = {
            "nearest": v2.InterpolationMode.NEAREST,
            "bilinear": v2.InterpolationMode.BILINEAR,
            "bicubic": v2.InterpolationMode.BICUBIC,
        }
        import torch

        resize = [v2.Resize(self.resize_size, interpolation=modes[self.interpolation], antialias=True),
                  v2.CenterCrop(self.crop_size)]
        to_float = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(self.mean), std=list(self.std))]
        if self.resampler == "torch":
            return v2.Compose([v2.ToImage(), v2.RGB(), *resize, *to_float])
        return v2.Compose([v2.RGB(), *resize, v2.ToImage(), *to_float])


PreprocessSource = Union[PreprocessSpec, Callable[[Union[str, None]], PreprocessSpec]]


@dataclass(frozen=True)
class BackboneSpec:
    """The contract a backbone plugin fulfils. Building the spec must be cheap: no model, no download.

    Attributes:
        name: the name users type (`te extract --backbone NAME`); unique across installed plugins.
        feature_dim: length of the pooled feature vector the built model returns.
        build: `build(weights)` returns a torch.nn.Module mapping a normalized float batch
            [N, 3, H, W] to pooled features [N, feature_dim] (classifier removed). `weights` is one of
            `weights` below, or None for random initialization (te seeds the RNG before calling).
        preprocess: the `PreprocessSpec` the weights expect, or a callable `preprocess(weights)`
            returning one when it differs between weights.
        weights: names of the pretrained weights `build` accepts (may be empty).
        default_weights: the name used when the user does not choose (None: random init by default).
        classifier_prefixes: state-dict key prefixes of the classifier `build` removed; a local
            checkpoint of the full classification model loads with those keys dropped.
        description: one line for `te backbones`.
    """

    name: str
    feature_dim: int
    build: Callable[[Union[str, None]], "torch.nn.Module"]
    preprocess: PreprocessSource = field(default_factory=PreprocessSpec)
    weights: tuple[str, ...] = ()
    default_weights: str | None = None
    classifier_prefixes: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"backbone name must be a non-empty string without spaces, got {self.name!r}")
        if not isinstance(self.feature_dim, int) or self.feature_dim <= 0:
            raise ValueError(f"backbone {self.name!r}: feature_dim must be a positive int, got {self.feature_dim!r}")
        if not callable(self.build):
            raise ValueError(f"backbone {self.name!r}: build must be callable")
        object.__setattr__(self, "weights", tuple(self.weights))
        object.__setattr__(self, "classifier_prefixes", tuple(self.classifier_prefixes))
        if self.default_weights is not None and self.default_weights not in self.weights:
            raise ValueError(
                f"backbone {self.name!r}: default_weights {self.default_weights!r} is not among weights {self.weights}"
            )

    def preprocess_for(self, weights: str | None) -> PreprocessSpec:
        """The preprocessing for the named weights (the default weights' one for None or a file)."""
        if isinstance(self.preprocess, PreprocessSpec):
            return self.preprocess
        chosen = weights if weights in self.weights else self.default_weights
        spec = self.preprocess(chosen)
        if not isinstance(spec, PreprocessSpec):
            raise TypeError(f"backbone {self.name!r}: preprocess({chosen!r}) returned {type(spec).__name__}")
        return spec


@dataclass
class Backbone:
    """A built backbone: the model in eval mode plus everything that determines its features.

    Attributes:
        spec: the plugin's declaration.
        model: the feature extractor ([N, 3, H, W] -> [N, feature_dim]).
        weights: what initialized it: a weights name, "none" (random, seeded) or "file:<abs path>".
        preprocess: the preprocessing that goes with those weights.
        plugin: the distribution that provided the backbone.
        seed: the seed of a random initialization (None for pretrained weights).
    """

    spec: BackboneSpec
    model: "torch.nn.Module"
    weights: str
    preprocess: PreprocessSpec
    plugin: str | None = None
    seed: int | None = None
    _digest: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    def space_fields(self) -> dict[str, Any]:
        """What these features are as plain values: name, weights digest, transform and dim, the fields of
        the feature cache's space (`FeatureSpace(**bb.space_fields(), stored=..., precision=...)`)."""
        return {"backbone": self.name, "weights_digest": self.weights_digest,
                "transform": self.preprocess.to_dict(), "dim": self.feature_dim}

    def transform(self) -> Callable[[Any], "torch.Tensor"]:
        """The image transform these weights expect (see `PreprocessSpec.transform`)."""
        return self.preprocess.transform()

    def __call__(self, images: "torch.Tensor") -> "torch.Tensor":
        """Features of a normalized batch, without gradients."""
        import torch

        with torch.inference_mode():
            return self.model(images)

    @property
    def weights_digest(self) -> str:
        """The content hash of the model's weights (`transfer_engine.core.digest.weights_digest`): two
        builds with the same weights give the same digest. Computed once, on first use (it hashes every
        weight byte).
        """
        if self._digest is None:
            self._digest = digest.weights_digest(self.model)
        return self._digest
