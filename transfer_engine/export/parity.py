"""How far an ONNX model is from PyTorch, measured on the same real images, and whether that is close enough.

Measures (over all check images; logits unless under "features"):
    max_abs_diff, mean_abs_diff   |ONNX - PyTorch|
    cosine                        the smallest per-image cosine similarity
    top1_agreement                fraction of images whose top class is the same
    accuracy, accuracy_delta      accuracy of the ONNX model, and it minus PyTorch's (labelled images)

Tolerances (documented in docs/export.md):
    fp32    max_abs_diff <= FP32_RTOL x max(1, largest |PyTorch logit|) for logits, the same for features
            with their own scale, and top-1 agreement 100% -- except images whose two best PyTorch logits
            are closer than twice that tolerance (a tie that any float reordering may break).
    int8 / fp16, and models with preprocessing in the graph: top-1 agreement >= min_agreement (0.99 by
            default; `--min-agreement`).
    preprocessing in the graph: every uint8 pixel level within 1 of PyTorch's transform on all but
            PIXEL_MISMATCH_FRACTION of the values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from transfer_engine.core.format import points


FP32_RTOL = 1e-4
PIXEL_LEVELS = 1.0
PIXEL_MISMATCH_FRACTION = 0.005


@dataclass
class Reference:
    """PyTorch's outputs on the check images: what every variant is compared with."""

    logits: np.ndarray
    features: np.ndarray
    labels: np.ndarray | None  # -1 where unlabelled; None when nothing is labelled
    # The logit margin at or under which the reference's top two classes are a tie (None: twice the fp32
    # tolerance). A --qat run's reference is its int8 simulation, whose logits lie on a grid: one step of it.
    tie_margin: float | None = None

    @property
    def logit_tolerance(self) -> float:
        return FP32_RTOL * max(1.0, float(np.abs(self.logits).max()))

    @property
    def feature_tolerance(self) -> float:
        return FP32_RTOL * max(1.0, float(np.abs(self.features).max()))

    def accuracy(self) -> float | None:
        return _accuracy(self.logits, self.labels)


def compare(ref: Reference, logits: np.ndarray, features: np.ndarray | None) -> dict[str, Any]:
    """The parity measures of one variant's outputs against PyTorch's.

    Args:
        ref: PyTorch's outputs.
        logits: the variant's logits [N, classes].
        features: the variant's features [N, D], or None when the model has no features output.

    Returns:
        {max_abs_diff, mean_abs_diff, cosine, top1_agreement, accuracy, accuracy_delta,
         ties_broken_differently, features: {max_abs_diff, mean_abs_diff, cosine}}.
    """
    logits = np.asarray(logits, dtype=np.float64)
    diff = np.abs(logits - ref.logits)
    agree = logits.argmax(1) == ref.logits.argmax(1)
    near_tie = near_ties(ref.logits, 2 * ref.logit_tolerance if ref.tie_margin is None else ref.tie_margin)
    accuracy, torch_accuracy = _accuracy(logits, ref.labels), ref.accuracy()
    out: dict[str, Any] = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "cosine": _min_cosine(logits, ref.logits),
        "top1_agreement": float(agree.mean()),
        "images": int(len(agree)),
        "accuracy": accuracy,
        "accuracy_delta": None if accuracy is None or torch_accuracy is None else accuracy - torch_accuracy,
        "disagreements": int((~agree).sum()),
        "disagreements_outside_ties": int((~agree & ~near_tie).sum()),
    }
    if features is not None:
        features = np.asarray(features, dtype=np.float64)
        fdiff = np.abs(features - ref.features)
        out["features"] = {"max_abs_diff": float(fdiff.max()), "mean_abs_diff": float(fdiff.mean()),
                           "cosine": _min_cosine(features, ref.features)}
    return out


def near_ties(logits: np.ndarray, margin: float) -> np.ndarray:
    """Whether each row's top two logits are within `margin` of each other (a tie: either class is the answer)."""
    if logits.shape[1] < 2:
        return np.zeros(len(logits), bool)
    top2 = np.sort(logits, axis=1)[:, -2:]
    return (top2[:, 1] - top2[:, 0]) <= margin


def fp32_failure(ref: Reference, measures: dict[str, Any]) -> str | None:
    """Why fp32 measures are out of tolerance (None when they are within it)."""
    if measures["max_abs_diff"] > ref.logit_tolerance:
        return (f"logits differ by up to {measures['max_abs_diff']:.3g} > tolerance {ref.logit_tolerance:.3g} "
                f"({FP32_RTOL:g} x logit scale {ref.logit_tolerance / FP32_RTOL:.3g})")
    feats = measures.get("features")
    if feats and feats["max_abs_diff"] > ref.feature_tolerance:
        return (f"features differ by up to {feats['max_abs_diff']:.3g} > tolerance {ref.feature_tolerance:.3g} "
                f"({FP32_RTOL:g} x feature scale {ref.feature_tolerance / FP32_RTOL:.3g})")
    if measures["disagreements_outside_ties"]:
        return f"top-1 class differs on {measures['disagreements_outside_ties']} image(s) that are not near-ties"
    return None


def agreement_failure(measures: dict[str, Any], min_agreement: float) -> str | None:
    """Why a quantized (or end-to-end) variant is refused (None when it is accepted)."""
    if measures["top1_agreement"] < min_agreement:
        return (f"top-1 agreement with PyTorch {measures['top1_agreement']:.1%} < --min-agreement "
                f"{min_agreement:.1%} (accuracy delta {points(measures['accuracy_delta'])})")
    return None


def pixel_measures(onnx_pixels: np.ndarray, torch_pixels: np.ndarray, std: Sequence[float]) -> dict[str, Any]:
    """How far in-graph preprocessing is from PyTorch's transform, in uint8 levels (0..255)."""
    levels = np.abs(onnx_pixels - torch_pixels) * np.asarray(std, dtype=np.float64).reshape(1, 3, 1, 1) * 255.0
    return {"max_level_diff": float(levels.max()), "mean_level_diff": float(levels.mean()),
            "values_off_by_more_than_1_level": float((levels > PIXEL_LEVELS + 0.01).mean()),
            "values_off_by_1_level": float(((levels > 0.5) & (levels <= PIXEL_LEVELS + 0.01)).mean())}


def pixel_failure(measures: dict[str, Any]) -> str | None:
    """Why in-graph preprocessing is refused (None when it matches PyTorch's transform)."""
    off = measures["values_off_by_more_than_1_level"]
    if off > PIXEL_MISMATCH_FRACTION:
        return (f"in-graph preprocessing puts {off:.2%} of pixel values more than {PIXEL_LEVELS:g} level away from "
                f"PyTorch's transform (allowed {PIXEL_MISMATCH_FRACTION:.1%}; up to {measures['max_level_diff']:.0f})")
    return None


def worst(per_provider: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The least favourable value of each measure over the providers (what a variant is judged by)."""
    keys_max = ("max_abs_diff", "mean_abs_diff", "disagreements", "disagreements_outside_ties", "images")
    keys_min = ("cosine", "top1_agreement", "accuracy", "accuracy_delta")
    rows = list(per_provider.values())
    out: dict[str, Any] = {}
    for k in keys_max:
        out[k] = max(r[k] for r in rows)
    for k in keys_min:
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = min(vals) if vals else None
    feats = [r["features"] for r in rows if "features" in r]
    if feats:
        out["features"] = {"max_abs_diff": max(f["max_abs_diff"] for f in feats),
                           "mean_abs_diff": max(f["mean_abs_diff"] for f in feats),
                           "cosine": min(f["cosine"] for f in feats)}
    return out


def _accuracy(logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    known = labels >= 0
    if not known.any():
        return None
    return float((logits.argmax(1)[known] == labels[known]).mean())


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero = (na == 0) & (nb == 0)  # two all-zero vectors are the same vector
    cos = (a * b).sum(1) / np.maximum(na * nb, 1e-30)
    cos[both_zero] = 1.0
    return float(cos.min())
