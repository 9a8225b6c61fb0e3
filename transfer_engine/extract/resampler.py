"""`--resampler auto|pil|torch`: how images are resized for a run, decided like the backend.

On camera-sized photos most of te extract's time is not the model but decoding and resizing, and
PIL's antialiased resize of a large photo takes longer than decoding it. torch's antialiased resize of
the decoded uint8 tensor is the same filter computed another way, several times faster, and moves
pixels by a few levels (features far less than the cache's bound: docs/extract.md, "Preprocessing"). Since it changes pixels it is part of the feature space's identity
(`PreprocessSpec.resampler`), never a silent swap: a run made with it says so in its space, its run and
its exported model, and every later step (te finetune, te export's checks and `--preprocess` graph,
te predict) resizes the same way because it builds its transform from that recorded spec.

`auto` times both on the calibration images (decode + transform, on every core); when torch is at least
`MIN_SPEEDUP` times faster it computes both resamplers' features with the backbone in fp32 and keeps
torch only if every image stays within `RESAMPLER_BOUND` of PIL's (otherwise nothing more is run). The decision is remembered in the cache per backbone, weights, transform and machine, so a
re-run, or another data set of the same cache, decides nothing and lands in the same space. A cache that
already holds this backbone's PIL features (an older te, or `--resampler pil`) keeps them: switching
would re-extract every image, which `auto` never does behind the user's back.

Reduced-size JPEG decoding (PIL's draft mode, libjpeg's DCT scaling) is not a candidate: measured on
real textured photos it moves features past the bound even when it only halves an image several times
larger than the resize target (docs/extract.md), on images the 8 calibration images cannot be trusted
to represent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from transfer_engine.backbones.calibration import min_row_cosine
from transfer_engine.core.choices import RESAMPLER_CHOICES, RESAMPLERS
from transfer_engine.core.runtime import torch_threads
from transfer_engine.errors import UsageError, first_line

RESAMPLER_BOUND = 0.999  # a new space, as a reduced precision: the cache's int8 storage bound
# How much faster than PIL's path torch's must be to be chosen. A resampler other than PIL makes another
# feature space than every PIL cache (and than another machine's decision): worth it for a clear gain,
# not for timings within each other's noise, where two caches built alike could land in two spaces.
MIN_SPEEDUP = 1.25
_DECISION_VERSION = 1


@dataclass
class ResamplerChoice:
    """The run's resampler and why.

    Attributes:
        resampler: "pil" or "torch" (what `PreprocessSpec.resampler` becomes).
        reason: one line for the user.
        measured: per resampler: {"ms_per_image", "min_cosine", "bound", "ok", "note"} (empty when nothing
            was measured: asked for, remembered, or kept for the cache's existing space).
    """

    resampler: str
    reason: str
    measured: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch: torch.Tensor | None = field(default=None, repr=False, compare=False)  # the calibration images, so preprocessed

    def fields(self) -> dict[str, Any]:
        """The decision as plain data (what the cache remembers, and what rank 0 sends the other nodes)."""
        return {"resampler": self.resampler, "reason": self.reason, "measured": self.measured}


def with_resampler(backbone, resampler: str):
    """The backbone, its preprocessing now resizing with `resampler` (the spec is frozen: a new one)."""
    backbone.preprocess = dataclasses.replace(backbone.preprocess, resampler=resampler)
    return backbone


def choose_resampler(request: str, backbone, cache, images: Callable[[], list[tuple[Any, bytes]]],
                     decode: Callable[[Any, bytes, bool], Any]) -> ResamplerChoice:
    """Resolve `--resampler` to "pil" or "torch", and say why.

    Args:
        request: "auto", "pil" or "torch".
        backbone: the built backbone (its preprocessing as the plugin declares it).
        cache: the open `FeatureCache` (remembers the decision; its spaces tell what it already holds).
        images: returns the calibration images as (sample, encoded bytes) pairs (called only to measure).
        decode: `decode(sample, data, tensor)`: the data source's decoder (PIL image, or uint8 tensor).

    Raises:
        UsageError: an unknown request.
    """
    if request not in RESAMPLER_CHOICES:
        raise UsageError(f"--resampler must be one of {', '.join(RESAMPLER_CHOICES)}, got {request!r}")
    nearest = backbone.preprocess.interpolation == "nearest"
    if request == "torch" and nearest:
        raise UsageError(f"--resampler torch: {backbone.name} resizes with nearest, which only PIL computes as its "
                         "weights expect (torch's nearest picks other pixels); use --resampler pil or auto")
    if request != "auto":
        return ResamplerChoice(request, "asked for")
    if nearest:
        return ResamplerChoice("pil", "auto: pil, the only resampler of nearest resizing")
    reference = dataclasses.replace(backbone.preprocess, resampler="pil")
    key = _decision_key(backbone, reference)
    remembered = cache.index.meta(key)
    if remembered:
        choice = ResamplerChoice(**json.loads(remembered))
        choice.reason += " (remembered)"
        return choice
    if _holds_pil_space(cache, backbone, reference):
        choice = ResamplerChoice("pil", f"auto: this cache already holds {backbone.name} features resized by PIL "
                                        "(kept: --resampler torch starts a faster space and extracts again)")
    else:
        pairs = images()
        if not pairs:
            return ResamplerChoice("pil", "auto: no decodable image to calibrate on")
        choice = _calibrate(backbone, reference, pairs, decode)
    with cache.lock, cache.index.write():
        cache.index.set_meta(key, json.dumps(choice.fields(), sort_keys=True))
    return choice


def _calibrate(backbone, reference, pairs: list[tuple[Any, bytes]], decode) -> ResamplerChoice:
    """Each resampler's time per image; the features (the model's two passes) only when a resampler
    other than PIL is faster: the fastest within bound of PIL's features wins."""
    measured: dict[str, dict[str, Any]] = {}
    batches: dict[str, torch.Tensor] = {}
    for name in RESAMPLERS:
        entry: dict[str, Any] = {"bound": 1.0 if name == "pil" else RESAMPLER_BOUND}
        measured[name] = entry
        try:
            batches[name], entry["ms_per_image"] = _timed_preprocess(dataclasses.replace(reference, resampler=name),
                                                                     pairs, decode)
        except Exception as exc:  # a resampler that cannot handle these images is out, with the reason
            entry.update(ok=False, note=f"failed: {first_line(exc, 200)}")
    pil = measured["pil"]
    pil.update(ok="ms_per_image" in pil, note=pil.get("note", "reference"))
    faster = [n for n, m in measured.items() if n != "pil" and "ms_per_image" in m
              and (not pil["ok"] or m["ms_per_image"] * MIN_SPEEDUP <= pil["ms_per_image"])]
    features = {"pil": backbone(batches["pil"])} if faster and pil["ok"] else {}
    for name, entry in measured.items():
        if name == "pil" or "ms_per_image" not in entry:
            continue
        if name not in faster:
            entry.update(ok=False, note=f"not {MIN_SPEEDUP}x faster than pil")
            continue
        cos = min_row_cosine(features["pil"], backbone(batches[name])) if features else 0.0
        entry.update(min_cosine=round(cos, 7), ok=cos >= entry["bound"],
                     note=f"min cosine {cos:.6f} {'>=' if cos >= entry['bound'] else '<'} {entry['bound']}")
    kept = [n for n, m in measured.items() if m.get("ok")]
    if not kept:
        return ResamplerChoice("pil", "auto: pil, " + "; ".join(f"{n}: {m['note']}" for n, m in measured.items()),
                               measured)
    best = min(kept, key=lambda n: measured[n]["ms_per_image"])
    batch = batches[best]
    others = ", ".join(f"{n} {m['ms_per_image']:.1f} ms ({m['note']})" if "ms_per_image" in m else f"{n} ({m['note']})"
                       for n, m in measured.items() if n != best)
    return ResamplerChoice(best, f"auto: {best} {measured[best]['ms_per_image']:.1f} ms an image, "
                                 f"{measured[best]['note']} (on {len(pairs)} of your images); {others}", measured,
                           batch)


def _timed_preprocess(spec, pairs: list[tuple[Any, bytes]], decode) -> tuple[torch.Tensor, float]:
    """The preprocessed batch, and the milliseconds per image of decoding + transforming it.

    The images are prepared on every core at once, as te extract's decode threads prepare them, each
    with one torch thread; an image's cost is the CPU time of the thread that prepared it, which sharing
    the cores does not inflate. (One thread after another, PIL's path on camera photos was a new cache's
    largest one-time cost: docs/extract.md.)

    Raises:
        Exception: an image this path cannot decode (the calibration images are the ones that decode).
    """
    transform = spec.transform()
    tensor = spec.resampler == "torch"
    transform(torch.zeros(3, 8, 8, dtype=torch.uint8))  # the transform's own first-call set-up, untimed

    def prepare(pair: tuple[Any, bytes]) -> tuple[torch.Tensor, float]:
        start = time.thread_time()
        image = transform(decode(pair[0], pair[1], tensor))
        return image, time.thread_time() - start

    with torch_threads(1), ThreadPoolExecutor(min(len(pairs), os.cpu_count() or 1)) as pool:
        done = list(pool.map(prepare, pairs))
    return torch.stack([image for image, _ in done]), round(1000 * sum(t for _, t in done) / len(pairs), 3)


def _holds_pil_space(cache, backbone, reference) -> bool:
    """Whether the cache has a space of this backbone and weights whose images PIL resized."""
    transform = reference.to_dict()
    return any(row.config.get("backbone") == backbone.name and row.config.get("weights_digest") ==
               backbone.weights_digest and row.config.get("transform") == transform for row in cache.index.spaces())


def _decision_key(backbone, reference) -> str:
    from transfer_engine.extract.backend import machine_fingerprint

    ident = {"version": _DECISION_VERSION, "backbone": backbone.name, "weights": backbone.weights_digest,
             "transform": reference.to_dict(), "bound": RESAMPLER_BOUND,
             "machine": machine_fingerprint(torch.device("cpu"))}
    return "auto_resampler:" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]
