"""The checks of one head spec: build with its declared options, forward, safetensors round trip, ONNX."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from transfer_engine.heads.spec import HeadSpec, first_linear, input_scale_of
from transfer_engine.plugins_check.onnx_check import check_onnx
from transfer_engine.plugins_check.results import FAIL, PASS, SKIP, Recorder

IN_FEATURES = 32
NUM_CLASSES = 5
BATCH = 4


def _build(spec: HeadSpec, seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = spec.build(IN_FEATURES, NUM_CLASSES, **spec.options)
    if not isinstance(head, torch.nn.Module):
        raise TypeError(f"build() returned {type(head).__name__}, not a torch.nn.Module")
    return head.eval()


def _round_trip(spec: HeadSpec, head: torch.nn.Module, features: torch.Tensor, logits: torch.Tensor) -> tuple[str, str]:
    """Save the head as te saves heads, load it into a head built with another seed, compare outputs."""
    from safetensors.torch import load_file, save_file

    state = head.state_dict()
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        return FAIL, f"state dict entries {not_tensors[:3]} are not tensors; safetensors holds tensors only"
    # What te's RunWriter does: detached, CPU, contiguous copies (no shared storage).
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with tempfile.TemporaryDirectory(prefix="te-plugin-check-") as tmp:
        path = Path(tmp) / "head.safetensors"
        save_file(plain, str(path))
        loaded = load_file(str(path))
    other = _build(spec, seed=1)
    other.load_state_dict(loaded, strict=True)
    with torch.inference_mode():
        again = other(features)
    if not torch.equal(again, logits):
        diff = (again - logits).abs().max().item()
        return FAIL, (f"after save and load the outputs differ by up to {diff:.3g}: some state lives outside "
                      "the state dict (register it as a buffer or parameter)")
    size = sum(t.numel() for t in plain.values())
    return PASS, f"{len(plain)} tensor(s), {size} values: identical outputs after save_file/load_file"


def _fit(fit, head: torch.nn.Module) -> tuple[str, str]:
    """Fit a head that declares `fit` on random rows of every class (te does this before using it)."""
    rows = 4 * NUM_CLASSES
    features = torch.randn(rows, IN_FEATURES, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(rows) % NUM_CLASSES
    fit(head, features, labels)
    return PASS, f"fit(module, features [{rows}, {IN_FEATURES}], labels [{rows}]) ran"


def _input_scale(spec: HeadSpec, head: torch.nn.Module, features: torch.Tensor,
                 logits: torch.Tensor) -> tuple[str, str]:
    """Whether the head is what its `input_scale` says: te trains on features / s and relies on it."""
    how = input_scale_of(spec, head)
    declared = spec.input_scale if spec.input_scale == how else f"{spec.input_scale} -> {how}"
    if how == "raw":
        return PASS, f"{declared}: trained on raw features"
    if how == "fold":
        if first_linear(head) is None:
            return FAIL, ("input_scale='fold' but the first layer is not an nn.Linear (or the first of an "
                          "nn.Sequential): te could not fold the scale back in; declare 'raw'")
        return PASS, f"{declared}: the first nn.Linear takes the scale back after training"
    with torch.inference_mode():
        scaled = head(features * 7.0)
    if not torch.allclose(scaled, logits, rtol=1e-4, atol=1e-5):
        diff = (scaled - logits).abs().max().item()
        return FAIL, (f"input_scale='invariant' but features x 7 change the logits by up to {diff:.3g}: the saved "
                      "head would be wrong on raw features; declare 'fold' or 'raw'")
    return PASS, f"{declared}: features x 7 give the same logits"


def check_head(spec: HeadSpec, rec: Recorder, *, onnx: bool = True) -> None:
    """Run the head checks on `spec`: build, fit (when it declares one), forward, input_scale, safetensors, onnx.

    Args:
        spec: the head's declaration.
        rec: where the results go.
        onnx: also export to ONNX and compare with onnxruntime.
    """
    built: dict[str, Any] = {}
    options = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "no options"

    def build() -> tuple[str, str]:
        built["head"] = _build(spec, seed=0)
        params = sum(p.numel() for p in built["head"].parameters())
        return PASS, f"build({IN_FEATURES}, {NUM_CLASSES}, {options}): {params} parameters"

    rec.run("head", spec.name, "build", build,
            hint="build(in_features, num_classes, **options) must accept every declared option")
    later = ["forward", "safetensors"] + (["onnx"] if onnx else [])
    if "head" not in built:
        for check in later:
            rec.add("head", spec.name, check, SKIP, "the head could not be built")
        return
    head = built["head"]
    fit = getattr(spec, "fit", None)  # heads fitted without gradient steps (a k-NN head) declare one
    if fit is not None:
        if rec.run("head", spec.name, "fit", lambda: _fit(fit, head)).status != PASS:
            for check in later:
                rec.add("head", spec.name, check, SKIP, "the head could not be fitted")
            return
    features = torch.randn(BATCH, IN_FEATURES, generator=torch.Generator().manual_seed(0))

    def forward() -> tuple[str, str]:
        with torch.inference_mode():
            out = head(features)
        if not isinstance(out, torch.Tensor) or list(out.shape) != [BATCH, NUM_CLASSES]:
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            return FAIL, f"features [{BATCH}, {IN_FEATURES}] give {got}, expected logits [{BATCH}, {NUM_CLASSES}]"
        if not torch.isfinite(out).all():
            return FAIL, "non-finite logits for finite features"
        built["logits"] = out
        return PASS, f"[{BATCH}, {IN_FEATURES}] -> [{BATCH}, {NUM_CLASSES}]"

    rec.run("head", spec.name, "forward", forward, hint="the head must map float32 features [N, D] to logits")
    if "logits" not in built:
        for check in later[1:]:
            rec.add("head", spec.name, check, SKIP, "the forward check failed")
        return
    rec.run("head", spec.name, "input_scale", lambda: _input_scale(spec, head, features, built["logits"]),
            hint="HeadSpec.input_scale: 'invariant', 'fold' or 'raw' (see docs/plugins.md)")
    rec.run("head", spec.name, "safetensors", lambda: _round_trip(spec, head, features, built["logits"]))
    if onnx:
        rec.run("head", spec.name, "onnx", lambda: check_onnx(head, features, built["logits"]),
                hint="the module must export with torch.onnx.export")
