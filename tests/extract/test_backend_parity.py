"""onnxruntime fp32 computes PyTorch fp32's features, so it may fill the same feature space.

One backbone of every built-in family, on real photos (skimage), through the very export and engines
te extract uses. EfficientNet-Lite0 has its real ImageNet weights; the torchvision families are randomly
initialized (no weights download here), which is the harder case for agreement: no trained
normalization keeps their activations in a tame range (EfficientNet-B0's features are ~1e-13).
The heavier families run with -m slow; `te extract` checks the same bound on every user's own images
before it uses onnxruntime at all.
"""

from __future__ import annotations

import pytest
import torch

from transfer_engine.backbones.calibration import min_row_cosine
from transfer_engine.extract import backend as backend_mod
from transfer_engine.extract import engines
from transfer_engine.onnx.runtime import ort_available

pytestmark = pytest.mark.skipif(not ort_available(torch.device("cpu")), reason="onnxruntime not installed")

FAST = ["resnet18", "mobilenet_v3_small", "regnet_y_800mf", "efficientnet_b0", "efficientnet_lite0"]
SLOW = ["convnext_tiny", "vit_b_32", "swin_t"]


@pytest.fixture(scope="module")
def photos():
    skdata = pytest.importorskip("skimage.data")
    from PIL import Image

    names = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "camera")
    return [Image.fromarray(getattr(skdata, n)()).convert("RGB") for n in names]


def check_family(name, photos, tmp_path):
    from transfer_engine.backbones import create_backbone
    from transfer_engine.onnx.export import export_backbone

    bb = create_backbone(name, weights="DEFAULT" if name == "efficientnet_lite0" else "none", seed=0)
    transform = bb.transform()
    x = torch.stack([transform(p) for p in photos])
    cpu = torch.device("cpu")
    reference = engines.TorchEngine(bb, cpu, "fp32")(x)
    export_backbone(bb.model, tmp_path / "b.onnx", crop_size=bb.preprocess.crop_size)
    features = engines.OrtEngine(tmp_path / "b.onnx", cpu)(x)
    assert features.shape == reference.shape == (len(photos), bb.feature_dim)
    assert min_row_cosine(reference, features) >= backend_mod.SAME_SPACE_BOUND


@pytest.mark.parametrize("name", FAST)
def test_onnxruntime_fp32_features_are_pytorch_fp32_features(name, photos, tmp_path):
    check_family(name, photos, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_onnxruntime_fp32_features_are_pytorch_fp32_features_heavy_families(name, photos, tmp_path):
    check_family(name, photos, tmp_path)


def test_min_row_cosine_measures_direction_at_any_scale():
    a = torch.tensor([[1e-13, 2e-13], [0.0, 0.0], [1.0, 0.0]])
    assert min_row_cosine(a, a * 3) == pytest.approx(1.0)
    assert min_row_cosine(a, torch.tensor([[1e-13, 2e-13], [0.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0)
