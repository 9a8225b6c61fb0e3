"""The offline demo: real data through a real pretrained backbone, with every step's result.

It runs the path as far as it exists today: which backbones and heads are installed; `te extract` of
the 1,797 real handwritten digits (`builtin:digits`) with a pretrained backbone into a feature cache
(a second run reuses it and says so); then a nearest-class-mean classifier on the cached features,
fitted on the train split and scored on the test split. Head training, fine-tuning, export and
prediction join it as they land.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

DEMO_BACKBONES = ("efficientnet_lite0", "resnet18")  # the first one installed is used


@dataclass
class DemoResult:
    backbone: str
    weights: str
    images: int
    feature_dim: int
    extracted: int
    reused: int
    seconds: float
    images_per_second: float
    precision: str
    test_accuracy: float
    chance_accuracy: float
    cache: str
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def nearest_class_mean_accuracy(features, labels: np.ndarray, test: np.ndarray) -> float:
    """Accuracy of classifying each test row by the closest class centroid (cosine) of the train rows."""
    import torch

    f = torch.nn.functional.normalize(features.float(), dim=1)
    y = torch.as_tensor(labels)
    train, held = torch.as_tensor(~test), torch.as_tensor(test)
    classes = torch.unique(y[train])
    centroids = torch.stack([f[train & (y == c)].mean(0) for c in classes])
    centroids = torch.nn.functional.normalize(centroids, dim=1)
    predicted = classes[(f[held] @ centroids.t()).argmax(1)]
    return float((predicted == y[held]).float().mean())


def run_demo(out: Path, backbone: str | None = None, limit: int | None = None,
             say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo, printing one line per step with `say`; files (cache, demo.json) go into `out`.

    Args:
        out: folder for the demo's files; its cache is reused by the next run.
        backbone: backbone name; default: the first of DEMO_BACKBONES that is installed.
        limit: use only the first `limit` digits (a quick check); None uses all 1,797.
    """
    from transfer_engine.backbones import list_backbones
    from transfer_engine.backbones import registry as backbone_registry
    from transfer_engine.cache import FeatureCache
    from transfer_engine.extract import extract
    from transfer_engine.heads import list_heads

    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        say(line)

    names = list_backbones()
    broken = [p for p in backbone_registry.plugins() if p.status != "ok"]
    step(f"[1/3] plugins: {len(names)} backbones, {len(list_heads())} heads installed"
         + (f"; {len(broken)} plugin(s) not ok, see `te plugins`" if broken else ""))

    chosen = backbone or next((n for n in DEMO_BACKBONES if n in names), None)
    if chosen is None:
        raise RuntimeError("no demo backbone is installed")
    # Pretrained weights when the backbone ships them offline; otherwise say plainly it is random.
    weights = "DEFAULT" if chosen == "efficientnet_lite0" or backbone else "none"
    cache_dir = out / "cache"
    started = time.perf_counter()
    summary = extract(chosen, "builtin:digits", cache_dir, weights=weights, name="digits", limit=limit)
    seconds = time.perf_counter() - started
    if summary.extracted == 0:
        how = f"nothing new: all {summary.reused} reused from the cache, no model work ({seconds:.1f} s)"
    else:
        how = (f"{summary.extracted} extracted, {summary.reused} reused in {summary.seconds:.1f} s "
               f"({summary.images_per_second:.1f} img/s, {summary.precision})")
    step(f"[2/3] te extract {chosen} ({summary.weights} weights) on builtin:digits "
         f"({summary.total} real handwritten digits, {summary.classes} classes): {how}")

    with FeatureCache.open(cache_dir, create=False) as cache:
        dataset = cache.dataset("digits")
        space = cache.space(next(s for s in cache.spaces() if s.id == summary.space))
        keys = dataset.keys()
        features = space.gather(keys)
        labels = np.asarray(dataset.labels(), dtype=np.int64)
        test = np.asarray([r.split == "test" for r in dataset.records])
    acc = nearest_class_mean_accuracy(features, labels, test)
    chance = 1.0 / summary.classes
    step(f"[3/3] nearest-class-mean on the cached {space.stored} features ({features.shape[1]}-d): "
         f"fitted on {int((~test).sum())} train+val digits, {acc:.1%} accuracy on {int(test.sum())} test digits "
         f"(chance {chance:.0%})")
    result = DemoResult(chosen, summary.weights, summary.total, int(features.shape[1]), summary.extracted,
                        summary.reused, summary.seconds, summary.images_per_second, summary.precision,
                        round(acc, 4), chance, str(cache_dir), steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    say(f"wrote {out / 'demo.json'}; the feature cache is {cache_dir} (`te cache info {cache_dir}`)")
    return result
