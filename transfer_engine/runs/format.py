"""The contents of run.json: what made a run, enough to rebuild its model without asking the user.

No torch import here: `te` commands that only read run.json stay fast.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    from transfer_engine.backbones.spec import Backbone

RUN_FORMAT = "te-run"
RUN_VERSION = 1
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
HEAD_WEIGHTS = "head.safetensors"
MODEL_WEIGHTS = "model.safetensors"
# A `te finetune --qat` run's int8 simulation ({"recipe", "simulation", "calibration"}): te export writes the
# int8 model it trained from it (transfer_engine/onnx/simulate.py).
QAT_JSON = "qat.json"
KINDS = ("train", "finetune")
# BackboneRef.weights of a run trained on a cache space that does not record where its weights came from
# (a space written without provenance): the head is usable on features, the backbone cannot be rebuilt.
UNRECORDED_WEIGHTS = "unrecorded"
# metrics.json["hyperparameters"]["fitted_on"] of a head refitted on train+val after a sweep: its val
# accuracy is in-sample (te finetune then does not let the start compete on val).
FITTED_ON_TRAIN_VAL = "train+val"


def fitted_on(metrics: dict) -> str | None:
    """What the model of a run with these metrics.json contents was fitted on, as far as its metrics say: a
    te train run's `fitted_on`, or the one a te finetune run records of its --from run (which a fine-tune of a
    fine-tune carries on). None: not recorded there."""
    recorded = (metrics.get("hyperparameters") or {}).get("fitted_on")
    return recorded if recorded is not None else (metrics.get("parent") or {}).get("fitted_on")


@dataclass
class BackboneRef:
    """Which backbone and which weights, as `Backbone.weights` labels them.

    Attributes:
        name: the backbone name (`te backbones`).
        weights: a weights name ("IMAGENET1K_V2"), "none" (random init with `seed`) or "file:<abs path>".
        weights_digest: `Backbone.weights_digest`: a rebuild must give the same digest.
        feature_dim: length of the pooled feature vector.
        seed: the seed of a random initialization (None for pretrained weights).
        plugin: the distribution that provided the backbone.
    """

    name: str
    weights: str
    weights_digest: str
    feature_dim: int
    seed: int | None = None
    plugin: str | None = None

    @classmethod
    def of(cls, backbone: "Backbone") -> "BackboneRef":
        """The reference of a built backbone."""
        return cls(backbone.name, backbone.weights, backbone.weights_digest, backbone.feature_dim,
                   backbone.seed, backbone.plugin)

    @property
    def weights_argument(self) -> str:
        """What to pass as `create_backbone(weights=...)` to rebuild these weights."""
        return self.weights[len("file:"):] if self.weights.startswith("file:") else self.weights


@dataclass
class HeadRef:
    """Which head, built how: `create_head(name, in_features, num_classes, **options)`."""

    name: str
    in_features: int
    num_classes: int
    options: dict[str, Any] = field(default_factory=dict)
    plugin: str | None = None


@dataclass
class RunInfo:
    """run.json.

    Attributes:
        kind: "train" (a head on cached features) or "finetune" (backbone and head trained together).
        backbone: the backbone and its weights (for a finetune run: the weights it started from).
        preprocess: `PreprocessSpec.to_dict()`: the transform the model expects.
        head: the head.
        class_names: the name of each output logit, in order.
        weights_file: HEAD_WEIGHTS (train) or MODEL_WEIGHTS (finetune).
        dataset: where the data came from: {"name", "cache", "data", "splits": {split: count}}.
        space: the feature space the head was trained on ({"id", "config"}), None for raw images.
        seed: the training seed.
        hyperparameters: what was chosen (lr, weight decay, epochs, ...), and how.
        versions: library versions at training time.
        parent: the run this one started from (finetune --from), else None.
    """

    kind: str
    backbone: BackboneRef
    preprocess: dict[str, Any]
    head: HeadRef
    class_names: list[str]
    weights_file: str
    dataset: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] | None = None
    seed: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    parent: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"run kind must be one of {KINDS}, got {self.kind!r}")
        if len(self.class_names) != self.head.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for a head with {self.head.num_classes} outputs")
        if not self.versions:
            self.versions = library_versions()

    def to_dict(self) -> dict[str, Any]:
        return {"format": RUN_FORMAT, "version": RUN_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "run.json") -> "RunInfo":
        """Parse run.json; a file of another format or a newer version is a one-line UsageError."""
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise UsageError(f"{where} is not a te run description (no \"format\": \"{RUN_FORMAT}\")")
        if int(data.get("version", 0)) > RUN_VERSION:
            raise UsageError(f"{where} is run format version {data['version']}; this te reads up to {RUN_VERSION} "
                             "(upgrade transfer-engine)")
        try:
            fields = {k: v for k, v in data.items() if k not in ("format", "version")}
            fields["backbone"] = BackboneRef(**fields["backbone"])
            fields["head"] = HeadRef(**fields["head"])
            return cls(**fields)
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"{where} is damaged or incomplete ({type(exc).__name__}: {exc})") from None


def library_versions() -> dict[str, str]:
    """Versions that matter for reproducing a run (imported lazily; missing ones are left out)."""
    from importlib import metadata

    from transfer_engine._version import __version__

    out = {"transfer_engine": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for dist in ("torch", "torchvision", "safetensors", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out
