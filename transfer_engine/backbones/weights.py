"""Turning the user's `--weights` choice into a built model.

Three kinds of choice:
    a weights name the backbone declares ("DEFAULT" resolves to its default; case does not matter,
        and torchvision's qualified "ResNet50_Weights.IMAGENET1K_V2" works too);
    "none": random initialization, seeded, so two runs build the same model;
    a path to a local state dict, loaded with `torch.load(weights_only=True)` (no pickle code runs);
        a checkpoint of the full classification model loads too: its classifier keys are dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transfer_engine.backbones.spec import BackboneSpec
from transfer_engine.errors import UsageError, WeightsError

RANDOM = "none"


def resolve_weights_name(spec: BackboneSpec, choice: str | None) -> str | None:
    """Map a user's choice to one of `spec.weights`, to None (random init) or leave a path alone.

    Returns:
        A declared weights name, None for random init, or the choice unchanged when it is a file path.

    Raises:
        UsageError: the choice is neither a declared name, "none", nor an existing file.
    """
    if choice is None or choice.upper() == "DEFAULT":
        if spec.default_weights is None:
            return None
        return spec.default_weights
    if choice.lower() == RANDOM:
        return None
    if choice in spec.weights:
        return choice
    folded = {w.lower(): w for w in spec.weights}
    for candidate in (choice, choice.rsplit(".", 1)[-1]):
        if candidate.lower() in folded:
            return folded[candidate.lower()]
    if _looks_like_path(choice):
        if not Path(choice).expanduser().is_file():
            raise UsageError(f"--weights {choice!r}: no such file")
        return choice
    offered = ", ".join(spec.weights) or "no pretrained weights"
    raise UsageError(
        f"backbone {spec.name!r} has no weights {choice!r}; choose one of: {offered}, "
        f"DEFAULT, none (random init) or a path to a local state dict"
    )


def _looks_like_path(choice: str) -> bool:
    return os.sep in choice or choice.startswith(".") or choice.startswith("~") or Path(choice).suffix != ""


def build_pretrained(spec: BackboneSpec, weights: str) -> nn.Module:
    """Call the plugin's builder with named weights, turning a failed download into one clear error."""
    try:
        return spec.build(weights)
    except OSError as exc:  # urllib's URLError, socket and HTTP failures are all OSErrors
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise WeightsError(
            f"could not get the pretrained weights {weights!r} of backbone {spec.name!r} "
            f"({type(exc).__name__}: {_reason(exc)}); they download once into {cache} and need network "
            f"access for that. Offline, pass --weights PATH (a local state dict) or --weights none (random init)"
        ) from exc


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc).splitlines()[0] if str(exc) else "no details"


def build_random(spec: BackboneSpec, seed: int) -> nn.Module:
    """Build with random initialization under `seed`, without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return spec.build(None)


def load_state_dict_file(spec: BackboneSpec, model: nn.Module, path: str) -> None:
    """Load a local checkpoint into a freshly built model, strictly.

    Accepted layouts: the feature model's own state dict, the full classification model's (its
    classifier keys, `spec.classifier_prefixes`, are dropped), either one wrapped as {"state_dict": ...}
    or {"model": ...}, and keys prefixed by "module." (saved from DataParallel / DDP).

    Raises:
        WeightsError: the file cannot be read safely, or its keys/shapes do not fit the model.
    """
    file = Path(path).expanduser()
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses pickled code; a truncated file fails to unzip
        raise WeightsError(f"cannot load --weights {str(file)!r} as a state dict: {type(exc).__name__}: {_reason(exc)}") from exc
    state = _unwrap(state, file)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    dropped = [k for k in state if k.startswith(spec.classifier_prefixes)] if spec.classifier_prefixes else []
    for key in dropped:
        del state[key]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # strict=False still refuses a tensor of another shape
        raise WeightsError(f"--weights {str(file)!r} does not fit backbone {spec.name!r}: "
                           f"{' '.join(str(exc).split())[:300]}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"{len(result.missing_keys)} missing keys (first: {result.missing_keys[0]!r})")
    if result.unexpected_keys:
        problems.append(f"{len(result.unexpected_keys)} unexpected keys (first: {result.unexpected_keys[0]!r})")
    if problems:
        raise WeightsError(f"--weights {str(file)!r} does not fit backbone {spec.name!r}: " + "; ".join(problems))


def _unwrap(state: Any, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"--weights {str(file)!r} holds no state dict of tensors")
    return state
