"""A `te train`-style linear run for the fine-tuning tests, made the way te train makes one.

Features of builtin:digits are computed with the backbone at a small input size, stored in a real feature
cache (a space and the data set record, with te extract's key-derived splits), a linear head is fitted
on the cached train features with L-BFGS, and the run directory is written with RunWriter. The input
size is the only thing te extract could not do here (it always uses the weights' own 224 px).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from transfer_engine.backbones import create_backbone
from transfer_engine.cache import FeatureCache, FeatureSpace, Record
from transfer_engine.data.sources import content_key, derived_split, open_source
from transfer_engine.finetune.data import scaled_preprocess
from transfer_engine.heads import create_head
from transfer_engine.runs import HEAD_WEIGHTS, METRICS_JSON, RUN_JSON, BackboneRef, HeadRef, RunInfo, RunWriter

DATA = "builtin:digits"


@torch.no_grad()
def _features(backbone, transform, source, samples, batch=128) -> torch.Tensor:
    out = []
    for lo in range(0, len(samples), batch):
        chunk = samples[lo:lo + batch]
        x = torch.stack([transform(source.decode(s, source.read_bytes(s))) for s in chunk])
        out.append(backbone.model.eval()(x).float())
    return torch.cat(out)


def make_linear_run(root: Path, backbone: str, *, weights: str = "none", input_size: int = 32,
                    limit: int | None = None, seed: int = 0, iterations: int = 100) -> Path:
    """Write ROOT/cache (features + data set "digits") and ROOT/linear (a kind="train" run); returns the run."""
    source = open_source(DATA)
    samples = list(source.samples())[:limit]
    keys = [content_key(source.read_bytes(s)) for s in samples]
    records = [Record(s.path, k, s.label, derived_split(k)) for s, k in zip(samples, keys)]
    bb = create_backbone(backbone, weights=weights, seed=seed)
    pre = scaled_preprocess(bb.preprocess, input_size)
    feats = _features(bb, pre.transform(), source, samples)
    space_cfg = FeatureSpace(backbone=bb.name, weights_digest=bb.weights_digest, transform=pre.to_dict(),
                             dim=bb.feature_dim, stored="fp32", pooling="avg", precision="fp32")
    with FeatureCache.open(root / "cache") as cache:
        space = cache.space(space_cfg)
        space.append(keys, feats)
        cache.put_dataset("digits", records, source.class_names)
        cache.set_provenance(space.id, {"backbone": bb.name, "weights": bb.weights, "seed": bb.seed,
                                        "plugin": bb.plugin, "data": DATA, "dataset": "digits"})
        by_split = {s: [r for r in records if r.split == s] for s in ("train", "val", "test")}
        x = {s: space.gather([r.key for r in rs]) for s, rs in by_split.items()}
    y = {s: torch.tensor([r.label for r in rs]) for s, rs in by_split.items()}
    torch.manual_seed(seed)
    head = create_head("linear", bb.feature_dim, len(source.class_names))
    opt = torch.optim.LBFGS(head.parameters(), lr=1, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(x["train"]), y["train"]) + 1e-4 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        acc = {f"{s}_accuracy": int((head(x[s]).argmax(1) == y[s]).sum()) / len(y[s]) for s in x}
    info = RunInfo(kind="train", backbone=BackboneRef.of(bb), preprocess=pre.to_dict(),
                   head=HeadRef("linear", bb.feature_dim, len(source.class_names)),
                   class_names=list(source.class_names), weights_file=HEAD_WEIGHTS,
                   dataset={"name": "digits", "cache": str((root / "cache").absolute()), "data": DATA,
                            "splits": {s: len(rs) for s, rs in by_split.items()}},
                   space={"id": space_cfg.id, "config": space_cfg.to_dict()}, seed=seed,
                   hyperparameters={"optimizer": "lbfgs", "iterations": iterations, "l2": 1e-4})
    with RunWriter(root / "linear") as w:
        w.save_tensors(HEAD_WEIGHTS, head.state_dict())
        w.write_json(METRICS_JSON, acc)
        w.write_json(RUN_JSON, info.to_dict())
    return root / "linear"
