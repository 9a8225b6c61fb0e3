"""The extraction pipeline: same features as a plain loop, in order, bad files reported not fatal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.backbones import Backbone, BackboneSpec, PreprocessSpec
from transfer_engine.extract.backend import PRECISION_BOUND
from transfer_engine.extract.pipeline import FeatureExtractor, Item


def tiny_backbone() -> Backbone:
    def build(weights):
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten()).eval()

    spec = BackboneSpec("tiny", 6, build, preprocess=PreprocessSpec(crop_size=16, resize_size=20))
    return Backbone(spec, build(None), "none", spec.preprocess_for(None))


def images(n):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)) for _ in range(n)]


def broken():
    raise OSError("image file is truncated")


@pytest.mark.parametrize("batch_size,workers", [(1, 1), (4, 2), (64, 3)])
def test_features_match_a_plain_loop_in_input_order_and_bad_files_are_listed(batch_size, workers):
    bb = tiny_backbone()
    pics = images(11)
    items = [Item(f"k{i}", f"p{i}.png", (lambda p=p: p)) for i, p in enumerate(pics)]
    items.insert(3, Item("bad", "bad.png", broken))
    batches = list(FeatureExtractor(bb, torch.device("cpu"), "fp32", batch_size, workers).run(items))
    keys = [k for b in batches for k in b.keys]
    assert keys == [f"k{i}" for i in range(11)]
    failed = [f for b in batches for f in b.failed]
    assert failed == [{"path": "bad.png", "reason": "OSError: image file is truncated"}]
    got = torch.cat([b.features for b in batches])
    transform = bb.transform()
    with torch.inference_mode():
        expected = bb.model(torch.stack([transform(p) for p in pics]))
    assert torch.allclose(got, expected, atol=1e-5)


def test_bf16_compute_stays_within_the_reduced_precision_bound_of_fp32():
    bb = tiny_backbone()
    items = [Item(f"k{i}", f"p{i}", (lambda p=p: p)) for i, p in enumerate(images(8))]
    fp32 = torch.cat([b.features for b in FeatureExtractor(bb, torch.device("cpu"), "fp32", 8).run(items)])
    bf16 = torch.cat([b.features for b in FeatureExtractor(bb, torch.device("cpu"), "bf16", 8).run(items)])
    assert bf16.dtype == torch.float32
    # the bound --precision auto holds a reduced precision to (a row below it would not be chosen)
    assert torch.nn.functional.cosine_similarity(fp32, bf16, dim=1).min() >= PRECISION_BOUND


def test_an_error_in_the_item_stream_reaches_the_caller():
    bb = tiny_backbone()

    def stream():
        yield Item("a", "a", lambda: images(1)[0])
        raise RuntimeError("the listing broke")

    with pytest.raises(RuntimeError, match="the listing broke"):
        list(FeatureExtractor(bb, torch.device("cpu"), "fp32", 1).run(stream()))
