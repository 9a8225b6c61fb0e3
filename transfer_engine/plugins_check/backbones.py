"""The checks of one backbone spec, and which backbones of a large zoo get checked.

Every backbone is built with random weights (seeded), never downloaded: a check must run offline and
test the plugin's code, not a server. Pretrained weights are the plugin's own tests' business.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch

from transfer_engine.backbones.spec import BackboneSpec, PreprocessSpec
from transfer_engine.plugins_check.onnx_check import check_onnx
from transfer_engine.plugins_check.results import FAIL, PASS, SKIP, Recorder

BATCH = 2


def choose(specs: list[BackboneSpec], *, limit: int, pattern: str | None, check_all: bool,
           max_params: int) -> tuple[list[BackboneSpec], list[dict[str, Any]]]:
    """The backbones to check, and the sampled-over ones too big to check by default.

    All of them when `check_all`, those matching `pattern` when given, all of them when there are no
    more than `limit`; otherwise `limit` spread evenly over the sorted names, so a zoo's families are
    covered, passing over those with more than `max_params` parameters (counted on the meta device,
    without memory or compute) so the default check stays quick.

    Returns:
        (chosen specs, [{"name", "parameters"}] passed over for size).
    """
    ordered = sorted(specs, key=lambda s: s.name)
    if check_all:
        return ordered, []
    if pattern:
        return [s for s in ordered if fnmatch.fnmatch(s.name, pattern)], []
    if len(ordered) <= limit:
        return ordered, []
    chosen: list[BackboneSpec] = []
    passed_over: list[dict[str, Any]] = []
    taken: set[str] = set()
    for slot in range(limit):
        start = slot * len(ordered) // limit
        for spec in ordered[start:] + ordered[:start]:
            if spec.name in taken:
                continue
            taken.add(spec.name)
            params = meta_parameters(spec)
            if max_params and params is not None and params > max_params:
                passed_over.append({"name": spec.name, "parameters": params})
                continue
            chosen.append(spec)
            break
    return chosen, passed_over


def meta_parameters(spec: BackboneSpec) -> int | None:
    """The parameter count of `spec`'s model, built on the meta device (None if it cannot be)."""
    try:
        with torch.device("meta"):
            model = spec.build(None)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # not every plugin builds on meta; such a model is simply checked
        return None


def _preprocess_check(spec: BackboneSpec) -> tuple[str, str]:
    choices: list[str | None] = [None, *spec.weights]
    problems = []
    for weights in choices:
        pre = spec.preprocess_for(weights)
        if not isinstance(pre, PreprocessSpec):
            raise TypeError(f"preprocess({weights!r}) returned {type(pre).__name__}, not a PreprocessSpec")
        # PreprocessSpec validated its own fields; what it cannot know is whether they are plausible.
        if not all(0.0 <= m <= 1.0 for m in pre.mean) or not all(0.0 < s <= 1.0 for s in pre.std):
            problems.append(f"{weights or 'random init'}: mean {pre.mean} / std {pre.std} are not for [0, 1] RGB")
    if problems:
        return FAIL, "; ".join(problems[:2]) + " (te scales pixels to [0, 1] before normalizing)"
    pre = spec.preprocess_for(spec.default_weights)
    note = ("; te's default ImageNet preprocessing: declare it if your weights expect another"
            if spec.preprocess == PreprocessSpec() else "")
    return PASS, (f"complete for {len(choices)} weights choice(s): resize {pre.resize_size} ({pre.interpolation}), "
                  f"crop {pre.crop_size}, mean {tuple(round(v, 3) for v in pre.mean)}, "
                  f"std {tuple(round(v, 3) for v in pre.std)}{note}")


def check_backbone(spec: BackboneSpec, rec: Recorder, *, onnx: bool = True) -> None:
    """Run the backbone checks on `spec`: preprocess, build, forward, onnx.

    Args:
        spec: the backbone's declaration.
        rec: where the results go.
        onnx: also export to ONNX and compare with onnxruntime.
    """
    from transfer_engine.backbones.weights import build_random

    rec.run("backbone", spec.name, "preprocess", lambda: _preprocess_check(spec),
            hint="preprocess must be a PreprocessSpec or a callable(weights) returning one")
    built: dict[str, Any] = {}

    def build() -> tuple[str, str]:
        model = build_random(spec, seed=0)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"build(None) returned {type(model).__name__}, not a torch.nn.Module")
        built["model"] = model.eval()
        params = sum(p.numel() for p in model.parameters())
        return PASS, f"random init (seed 0): {format_count(params)} parameters"

    rec.run("backbone", spec.name, "build", build,
            hint="build(None) must return an nn.Module with random weights, without downloading anything")
    if "model" not in built:
        for check in ("forward", "onnx") if onnx else ("forward",):
            rec.add("backbone", spec.name, check, SKIP, "the model could not be built")
        return
    model = built["model"]
    try:
        input_size = spec.preprocess_for(spec.default_weights).input_size
    except Exception:
        input_size = PreprocessSpec().input_size  # the preprocess check reported why
    example = torch.randn(BATCH, *input_size, generator=torch.Generator().manual_seed(0))

    def forward() -> tuple[str, str]:
        with torch.inference_mode():
            out = model(example)
        return _forward_verdict(spec, example, out, built)

    rec.run("backbone", spec.name, "forward", forward,
            hint=f"the model must take normalized images [N, {', '.join(map(str, input_size))}]")
    if onnx:
        if "features" not in built:
            rec.add("backbone", spec.name, "onnx", SKIP, "the forward check failed")
        else:
            rec.run("backbone", spec.name, "onnx", lambda: check_onnx(model, example, built["features"]),
                    hint="the module must export with torch.onnx.export (no data-dependent Python control flow)")


def _forward_verdict(spec: BackboneSpec, example: torch.Tensor, out: Any, built: dict[str, Any]) -> tuple[str, str]:
    shape_in = "x".join(map(str, example.shape))
    if not isinstance(out, torch.Tensor):
        return FAIL, f"returns {type(out).__name__}, not a tensor of pooled features [N, {spec.feature_dim}]"
    shape = list(out.shape)
    if out.ndim != 2 or shape[0] != len(example):
        return FAIL, (f"[{shape_in}] gives {shape}: build() must return pooled features [N, D] "
                      "(pool and flatten, remove the classifier)")
    if shape[1] != spec.feature_dim:
        return FAIL, (f"declares feature_dim={spec.feature_dim} but [{shape_in}] gives {shape}: set "
                      f"feature_dim={shape[1]} in its BackboneSpec (te sizes the feature cache by it)")
    if not out.is_floating_point() or not torch.isfinite(out).all():
        return FAIL, f"[{shape_in}] gives non-finite or non-float features ({out.dtype})"
    built["features"] = out.float()
    return PASS, f"[{shape_in}] -> {shape}, matches feature_dim={spec.feature_dim}"


def format_count(n: int) -> str:
    """A parameter count for people: 11.7M, 1.2B."""
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def parse_count(text: str) -> int:
    """`50M`, `1.5B`, `200k` or a plain number, as an int (0 means no limit)."""
    text = text.strip().lower()
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}.get(text[-1:], 1)
    number = float(text[:-1] if scale != 1 else text)
    if number < 0 or math.isnan(number):
        raise ValueError(text)
    return int(number * scale)
