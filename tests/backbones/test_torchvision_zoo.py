"""te's built-in torchvision backbones: every one builds, returns its declared feature size, and its
preprocessing is exactly what torchvision's weights expect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transfer_engine.backbones import create_backbone, get_backbone_spec, registry
from transfer_engine.backbones.torchvision_zoo import backbones as torchvision_backbones

BUILTIN = [spec.name for spec in torchvision_backbones()]


def test_the_required_models_are_built_in():
    required = {"resnet18", "resnet34", "resnet50", "resnet101", "efficientnet_b0", "mobilenet_v3_large",
                "convnext_tiny", "regnet_y_800mf", "vit_b_16"}
    assert required <= set(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_builds_with_random_weights_and_returns_declared_feature_dim(name):
    bb = create_backbone(name, weights="none")
    assert bb.weights == "none" and bb.seed == 0
    assert not bb.model.training
    size = bb.preprocess.crop_size
    with torch.inference_mode():
        out = bb.model(torch.randn(2, 3, size, size))
    assert out.shape == (2, bb.feature_dim)
    assert torch.isfinite(out).all()


def test_the_table_of_weights_is_torchvision_s_own():
    """The specs name their weights without importing torchvision.models (seconds of every te command's
    start-up); this is what keeps the written names from drifting from torchvision's enums."""
    from torchvision.models import get_model_weights

    for spec in torchvision_backbones():
        enum = get_model_weights(spec.name)
        assert spec.weights == tuple(m.name for m in enum) and spec.default_weights == enum.DEFAULT.name, spec.name


def test_listing_the_backbones_does_not_import_torchvision_models():
    import subprocess
    import sys

    probe = ("import sys; from transfer_engine.backbones.torchvision_zoo import backbones; specs = backbones(); "
             "print(len(specs), 'torchvision.models' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == [str(len(BUILTIN)), "False"], out.stderr[-2000:]


def test_resnet50_feature_dim_is_2048_and_default_weights_come_from_torchvision():
    spec = get_backbone_spec("resnet50")
    assert spec.feature_dim == 2048
    assert spec.default_weights == "IMAGENET1K_V2"
    assert set(spec.weights) == {"IMAGENET1K_V1", "IMAGENET1K_V2"}
    assert spec.preprocess_for("IMAGENET1K_V1").resize_size == 256
    assert spec.preprocess_for("IMAGENET1K_V2").resize_size == 232


@pytest.mark.parametrize("name,weights", [("resnet50", "IMAGENET1K_V1"), ("resnet50", "IMAGENET1K_V2"),
                                          ("efficientnet_b3", "IMAGENET1K_V1"), ("vit_b_16", "IMAGENET1K_V1")])
def test_preprocessing_matches_torchvision_transforms_on_a_real_photo(name, weights):
    from PIL import Image
    from skimage import data
    from torchvision.models import get_model_weights

    photo = Image.fromarray(data.chelsea())
    ours = get_backbone_spec(name).preprocess_for(weights).transform()(photo)
    theirs = get_model_weights(name)[weights].transforms()(photo)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_random_init_is_seeded():
    a = create_backbone("resnet18", weights="none", seed=3).model.state_dict()
    b = create_backbone("resnet18", weights="none", seed=3).model.state_dict()
    c = create_backbone("resnet18", weights="none", seed=4).model.state_dict()
    assert torch.equal(a["conv1.weight"], b["conv1.weight"])
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_named_weights_load_from_the_torch_hub_cache(tmp_path, monkeypatch):
    # torchvision keeps downloaded weights in $TORCH_HOME/hub/checkpoints under the URL's file name;
    # a file already there is used without any network access.
    from torchvision.models import ResNet18_Weights, resnet18

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference.state_dict(), cache / ResNet18_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1])
    bb = create_backbone("resnet18", weights="imagenet1k_v1")  # names are case-insensitive
    assert bb.weights == "IMAGENET1K_V1" and bb.seed is None
    assert torch.equal(bb.model.state_dict()["layer1.0.conv1.weight"], reference.state_dict()["layer1.0.conv1.weight"])


def test_failed_download_is_one_clear_error_offering_alternatives(tmp_path, monkeypatch):
    from transfer_engine.errors import WeightsError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: torchvision must download
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens there: the download fails fast
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(WeightsError) as exc:
        create_backbone("resnet18")
    message = str(exc.value)
    assert "IMAGENET1K_V1" in message and "resnet18" in message
    assert "--weights PATH" in message and "--weights none" in message


@pytest.mark.parametrize("layout", ["full_model", "features_only", "wrapped_ddp"])
def test_local_state_dict_loads_in_the_layouts_people_save(tmp_path, layout):
    from torchvision.models import resnet18

    full = resnet18()
    state = full.state_dict()
    if layout == "features_only":
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if layout == "wrapped_ddp":
        state = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    bb = create_backbone("resnet18", weights=str(path))
    assert bb.weights == f"file:{path.resolve()}"
    assert torch.equal(bb.model.state_dict()["conv1.weight"], full.state_dict()["conv1.weight"])


def test_state_dict_of_another_model_is_refused_with_the_reason(tmp_path):
    from torchvision.models import resnet34

    from transfer_engine.errors import WeightsError

    path = tmp_path / "resnet34.pth"
    torch.save(resnet34().state_dict(), path)
    with pytest.raises(WeightsError, match="does not fit backbone 'resnet18'.*unexpected keys"):
        create_backbone("resnet18", weights=str(path))


def test_pickled_code_is_never_executed(tmp_path):
    from transfer_engine.errors import WeightsError

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "payload": np.random.default_rng(0)}, path)
    with pytest.raises(WeightsError, match="cannot load"):
        create_backbone("resnet18", weights=str(path))


def test_bad_weights_choices_are_usage_errors():
    from transfer_engine.errors import UsageError

    with pytest.raises(UsageError, match="IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, none"):
        create_backbone("resnet50", weights="imagenet22k")
    with pytest.raises(UsageError, match="no such file"):
        create_backbone("resnet50", weights="/does/not/exist.pth")


def test_weights_digest_is_content_addressed():
    a = create_backbone("resnet18", weights="none", seed=1)
    b = create_backbone("resnet18", weights="none", seed=1)
    c = create_backbone("resnet18", weights="none", seed=2)
    assert a.weights_digest == b.weights_digest != c.weights_digest
    assert len(a.weights_digest) == 64


def test_every_builtin_is_registered_through_te_own_distribution():
    owners = {spec.name: rec.distribution for spec, rec in registry.entries() if spec.name in BUILTIN}
    assert set(owners.values()) == {"transfer-engine"}
