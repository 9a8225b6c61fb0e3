"""The offline demo: real data through a real pretrained backbone, with every step's result.

Today it shows the foundation: which backbones and heads are installed, then features of the 1,797
real handwritten digits (`builtin:digits`) from a pretrained backbone, and how well a nearest-class-mean
classifier on those features does on held-out digits. Later stages (cache, train, finetune, export,
predict) join it as they land.
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
    seconds: float
    images_per_second: float
    test_accuracy: float
    chance_accuracy: float
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def stratified_holdout(labels: np.ndarray, every: int = 5) -> np.ndarray:
    """Boolean test mask: every `every`-th sample of each class (deterministic, balanced)."""
    test = np.zeros(labels.shape[0], dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[idx[::every]] = True
    return test


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


def run_demo(out: Path, backbone: str | None = None, batch_size: int = 64, limit: int | None = None,
             say: Callable[[str], None] = print) -> DemoResult:
    """Run the demo, printing one line per step with `say`, and write `demo.json` into `out`.

    Args:
        out: folder for the demo's files.
        backbone: backbone name; default: the first of DEMO_BACKBONES that is installed.
        batch_size: images per forward pass.
        limit: use only the first `limit` digits (a quick check); None uses all 1,797.
    """
    import torch

    from transfer_engine.backbones import create_backbone, list_backbones
    from transfer_engine.backbones import registry as backbone_registry
    from transfer_engine.data import load_builtin
    from transfer_engine.heads import list_heads

    steps: list[str] = []

    def step(line: str) -> None:
        steps.append(line)
        say(line)

    names = list_backbones()
    broken = [p for p in backbone_registry.plugins() if p.status != "ok"]
    step(f"[1/3] plugins: {len(names)} backbones, {len(list_heads())} heads installed"
         + (f"; {len(broken)} plugin(s) not ok, see `te plugins`" if broken else ""))

    data = load_builtin("builtin:digits")
    if limit is not None:
        data = data.head(limit)
    step(f"[2/3] data: {data.name}, {len(data)} real handwritten digits, {len(data.class_names)} classes")

    chosen = backbone or next((n for n in DEMO_BACKBONES if n in names), None)
    if chosen is None:
        raise RuntimeError("no demo backbone is installed")
    spec = backbone_registry.get(chosen)
    # Pretrained weights when the backbone ships them offline; otherwise say plainly it is random.
    weights = "DEFAULT" if chosen == "efficientnet_lite0" or backbone else "none"
    bb = create_backbone(chosen, weights=weights)
    transform = bb.transform()
    model = bb.model.to(memory_format=torch.channels_last)
    feats = []
    start = time.perf_counter()
    with torch.inference_mode():
        for lo in range(0, len(data), batch_size):
            batch = torch.stack([transform(data.pil(i)) for i in range(lo, min(lo + batch_size, len(data)))])
            feats.append(model(batch.contiguous(memory_format=torch.channels_last)))
    seconds = time.perf_counter() - start
    features = torch.cat(feats)
    test = stratified_holdout(data.labels)
    acc = nearest_class_mean_accuracy(features, data.labels, test)
    chance = 1.0 / len(data.class_names)
    step(f"[3/3] {chosen} ({bb.weights} weights, from {bb.plugin}): {len(data)} images -> "
         f"[{features.shape[0]}, {features.shape[1]}] features in {seconds:.1f} s ({len(data) / seconds:.0f} img/s); "
         f"nearest-class-mean accuracy on {int(test.sum())} held-out digits: {acc:.1%} (chance {chance:.0%})")
    result = DemoResult(chosen, bb.weights, len(data), spec.feature_dim, round(seconds, 3),
                        round(len(data) / seconds, 1), round(acc, 4), chance, steps)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    say(f"wrote {out / 'demo.json'}")
    return result
