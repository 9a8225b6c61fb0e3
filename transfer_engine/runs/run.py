"""`Run`: a finished run directory, and the model (backbone + head) it describes."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from transfer_engine.errors import TEError, UsageError, WeightsError, first_line
from transfer_engine.runs.format import (
    HEAD_WEIGHTS,
    METRICS_JSON,
    MODEL_WEIGHTS,
    RUN_JSON,
    UNRECORDED_WEIGHTS,
    RunInfo,
)

if TYPE_CHECKING:
    from transfer_engine.backbones.spec import Backbone, PreprocessSpec


class Classifier(nn.Module):
    """Backbone and head as one module: normalized images [N, 3, H, W] -> logits [N, classes].

    Attributes:
        backbone: images -> pooled features [N, feature_dim].
        head: features -> logits.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` is a directory holding a run.json."""
    return (Path(path) / RUN_JSON).is_file()


class Run:
    """A run directory written by `te train` or `te finetune`. Open one with `Run.open(path)`.

    Attributes:
        path: the directory.
        info: run.json, parsed.
        metrics: metrics.json (an empty dict when absent).
    """

    def __init__(self, path: Path, info: RunInfo, metrics: dict[str, Any]) -> None:
        self.path = path
        self.info = info
        self.metrics = metrics

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Run":
        """Read a run directory.

        Raises:
            UsageError: the path is missing, not a directory, has no run.json, or its files are damaged.
        """
        root = Path(path).expanduser()
        if not root.exists():
            raise UsageError(f"{root} does not exist; expected a run directory (te train --out RUN writes one)")
        if not root.is_dir() or not (root / RUN_JSON).is_file():
            raise UsageError(f"{root} is not a te run (it has no {RUN_JSON}; te train --out RUN writes one)")
        info = RunInfo.from_dict(_read_json(root / RUN_JSON), str(root / RUN_JSON))
        weights = root / info.weights_file
        if not weights.is_file():
            raise UsageError(f"{root} is an incomplete run: {info.weights_file} is missing")
        metrics_file = root / METRICS_JSON
        metrics = _read_json(metrics_file) if metrics_file.is_file() else {}
        return cls(root.absolute(), info, metrics)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, {self.info.kind}, {self.info.backbone.name} + {self.info.head.name})"

    @property
    def preprocess(self) -> "PreprocessSpec":
        from transfer_engine.backbones.spec import PreprocessSpec

        return PreprocessSpec.from_dict(self.info.preprocess)

    @property
    def class_names(self) -> list[str]:
        return list(self.info.class_names)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of the run's weights file (head.* only for a train run, backbone.* too for finetune)."""
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path / self.info.weights_file))
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise UsageError(f"{self.path / self.info.weights_file} cannot be read ({exc})") from None

    def build_head(self) -> nn.Module:
        """The trained head, in eval mode."""
        from transfer_engine.heads import create_head

        ref = self.info.head
        head = create_head(ref.name, ref.in_features, ref.num_classes, **ref.options)
        state = self.state_dict()
        if self.info.weights_file == MODEL_WEIGHTS:
            state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        _load(head, state, f"head {ref.name!r} of {self.path}")
        return head.eval()

    def build_backbone(self) -> "Backbone":
        """The backbone with the run's weights, in eval mode.

        A train run rebuilds the weights it recorded (a weights name, a file, or a seeded random init)
        and checks their digest against the one the features were extracted with; a finetune run loads
        its own fine-tuned weights from model.safetensors.

        Raises:
            WeightsError: the rebuilt weights differ from the recorded ones (a changed file, a changed
                plugin), or they cannot be obtained.
        """
        from transfer_engine.backbones import create_backbone

        ref = self.info.backbone
        if self.info.weights_file == MODEL_WEIGHTS:
            bb = create_backbone(ref.name, weights="none", seed=0)
            state = {k[len("backbone."):]: v for k, v in self.state_dict().items() if k.startswith("backbone.")}
            _load(bb.model, state, f"backbone {ref.name!r} of {self.path}")
            bb.weights = f"finetuned:{self.path}"
            bb._digest = None
            bb.model.eval()
            return bb
        if ref.weights == UNRECORDED_WEIGHTS:
            raise WeightsError(f"run {self.path} was trained on cached features whose space does not record which "
                               f"{ref.name!r} weights made them; its backbone cannot be rebuilt. Re-extract with "
                               "te extract (which records them) and train again")
        bb = create_backbone(ref.name, weights=ref.weights_argument, seed=ref.seed if ref.seed is not None else 0)
        if bb.weights_digest != ref.weights_digest:
            raise WeightsError(
                f"backbone {ref.name!r} rebuilt from {ref.weights!r} has other weights (digest "
                f"{bb.weights_digest[:12]}) than the run was trained on ({ref.weights_digest[:12]}); the weights "
                "file or the plugin changed since")
        bb.model.eval()
        return bb

    @functools.cached_property
    def qat(self) -> dict[str, Any] | None:
        """The int8 simulation a `te finetune --qat` run trained (its QAT_JSON), or None for any other run
        (read once: te export asks for it at several steps)."""
        from transfer_engine.runs.format import QAT_JSON

        path = self.path / QAT_JSON
        return _read_json(path) if path.is_file() else None

    def val_was_fitted(self) -> bool | None:
        """Whether the model's weights were fitted on val images too, not only on train: a head that
        `te train --sweep` refitted on train+val, or a finetune run started from one. None: not recorded
        (a run written before te recorded it, or a parent run that cannot be read).

        What a model was fitted on it fits better than new images (larger margins): te export judges int8
        only on images the model was not fitted on."""
        from transfer_engine.runs.format import FITTED_ON_TRAIN_VAL, fitted_on

        recorded = fitted_on(self.metrics)
        if self.info.kind == "finetune" and recorded is None:
            parent = self.metrics.get("parent") or {}
            if not parent:
                return False  # no --from: a new head, fitted on train alone
            if not parent.get("path"):
                return None
            try:  # a run written before te recorded it: ask the --from run (a fine-tune's asks its own)
                return Run.open(parent["path"]).val_was_fitted()
            except TEError:
                return None
        return None if recorded is None else recorded == FITTED_ON_TRAIN_VAL

    def cached_records(self) -> tuple[list | None, str]:
        """The records of the data set the run was trained on, read from its feature cache (the splits
        and keys te train used), or (None, why they cannot be read). The one reader of them: te finetune
        cannot go on without them, te export falls back to splits derived from the bytes and says so.

        Raises:
            DatasetChangedError: the data set under that name is no longer the one the run was trained on
                (other classes or other records: `transfer_engine.cache.identity.check_unchanged`).
        """
        from transfer_engine.cache import FeatureCache, identity

        dataset = self.info.dataset or {}
        cache, name = dataset.get("cache"), dataset.get("name")
        if not cache or not name:
            return None, "the run records no feature cache"
        try:
            with FeatureCache.open(cache, create=False) as fc:
                # the data set must still be the one trained on: same classes, same records (else refused)
                identity.check_unchanged(fc, name, self.class_names, dataset.get("sha256"), str(self.path))
                return list(fc.dataset(name).records), ""
        except identity.DatasetChangedError:
            raise
        except TEError as exc:
            return None, f"data set {name!r} of the cache {cache} cannot be read now: {first_line(exc)}"

    def build_model(self) -> Classifier:
        """Backbone and head as one `Classifier` in eval mode (what `te export` exports)."""
        return Classifier(self.build_backbone().model, self.build_head()).eval()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} cannot be read as JSON ({exc})") from None


def _load(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UsageError(f"{what}: the saved weights do not fit the model ({first_line(exc)})") from None
