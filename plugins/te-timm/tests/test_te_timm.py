"""The te-timm plugin as a user meets it: timm's zoo listed by te without building a model, details of
one model, random-init extraction, weights from the Hugging Face cache or a local file, one clear error
offline, preprocessing identical to timm's own, and te's conformance check passing.

Small models only (resnet18, mobilenetv3_small_050) and random weights: nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import te_timm
from te_timm import index as timm_index
from transfer_engine.backbones import create_backbone, get_backbone_spec, list_backbones, registry
from transfer_engine.errors import WeightsError

SAMPLE = ["convnext_atto", "deit_tiny_distilled_patch16_224", "mobilenetv3_small_050", "resnet18",
          "vit_tiny_patch16_224"]


def te(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    full.pop("TE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "transfer_engine", *args], capture_output=True, text=True,
                          env=full, timeout=300)


def put_in_hub_cache(cache: Path, repo: str, filename: str, state: dict[str, torch.Tensor]) -> Path:
    """Store `state` where huggingface_hub keeps a downloaded file: models--ORG--NAME/snapshots/COMMIT/FILE,
    with refs/main naming the commit (the layout `hf_hub_download` writes)."""
    from safetensors.torch import save_file

    commit = "3" * 40
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / filename))
    return snapshot / filename


@pytest.fixture(scope="module")
def full_resnet18_state() -> dict[str, torch.Tensor]:
    """A whole timm resnet18 (classifier included), seeded: what a checkpoint of it holds."""
    import timm

    torch.manual_seed(123)
    return {k: v.clone() for k, v in timm.create_model("resnet18", pretrained=False).state_dict().items()}


# (1) te lists timm's zoo without building models, and shows one model's details.


def test_te_backbones_answers_from_the_index_without_importing_timm() -> None:
    # `te backbones 'timm/*'` and `te backbones timm/resnet50` in one fresh process, then a look at
    # what the process imported: listing must not build a model, nor even import timm.
    code = (
        "import sys\n"
        "from transfer_engine.cli.main import main\n"
        "assert main(['backbones', 'timm/*', '--json']) == 0\n"
        "print('----')\n"
        "assert main(['backbones', 'timm/resnet50']) == 0\n"
        "print('----', sorted(m for m in ('timm', 'te_timm._build') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    listing, details, imported = result.stdout.split("----")
    assert imported.strip() == "[]", f"listing imported {imported}"
    rows = {r["name"]: r for r in json.loads(listing)["backbones"]}
    assert len(rows) > 1000 and all(r["plugin"].replace("_", "-") == "te-timm" for r in rows.values())
    assert rows["timm/resnet18"]["feature_dim"] == 512
    assert rows["timm/mobilenetv3_small_050"]["feature_dim"] == 1024  # timm's pre-logits conv head
    assert "feature_dim      2048" in details and "te-timm" in details
    assert "a1_in1k" in details and "tv_in1k" in details and "default weights  a1_in1k" in details
    # timm's pretrained_cfg of resnet50.a1_in1k: 224 input, crop_pct 0.95 -> resize 235, bicubic
    assert "resize 235 (bicubic), crop 224" in details


def test_spec_carries_timms_tags_and_classifier() -> None:
    spec, record = registry.lookup("timm/resnet50")
    assert record.distribution.replace("_", "-") == "te-timm" and record.version == te_timm.__version__
    assert spec.weights[0] == "a1_in1k" and spec.default_weights == "a1_in1k" and "tv_in1k" in spec.weights
    assert spec.classifier_prefixes == ("fc.",)
    assert get_backbone_spec("timm/deit_tiny_distilled_patch16_224").classifier_prefixes == ("head.", "head_dist.")
    tv = spec.preprocess_for("tv_in1k")
    assert (tv.crop_size, tv.resize_size, tv.interpolation) == (224, 256, "bilinear")
    from timm.models import get_pretrained_cfg

    for arch in SAMPLE:  # te's default weights are timm's default tag
        assert get_backbone_spec(f"timm/{arch}").default_weights == get_pretrained_cfg(arch).tag, arch


# (2) The index is what timm says, and is rebuilt for another timm version.


def test_shipped_index_matches_the_installed_timm_for_a_sample() -> None:
    fresh = timm_index.build_index(SAMPLE)
    shipped = timm_index.load_index()
    assert fresh["timm_version"] == shipped["timm_version"]
    for arch in SAMPLE:
        assert fresh["models"][arch] == shipped["models"][arch], arch


def test_another_timm_version_is_indexed_once_into_the_user_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(timm_index, "timm_version", lambda: "1.0.31.post1")
    shipped = timm_index.read_shipped()
    built = timm_index.load_index()
    cached = tmp_path / "te-timm" / "timm-1.0.31.post1.json.gz"
    assert cached.is_file() and built["timm_version"] == "1.0.31.post1"
    assert set(built["models"]) == set(shipped["models"])
    assert {a: e["feature_dim"] for a, e in built["models"].items()} == \
        {a: e["feature_dim"] for a, e in shipped["models"].items()}
    assert built["models"]["resnet18"]["weights"] == shipped["models"]["resnet18"]["weights"]
    # The second time it is read, not rebuilt.
    monkeypatch.setattr(timm_index, "build_index", lambda *a, **k: pytest.fail("rebuilt the index"))
    assert timm_index.load_index()["models"].keys() == built["models"].keys()


# (3) Models: declared sizes hold, random init extracts, preprocessing equals timm's.


@pytest.mark.parametrize("name", ["timm/resnet18", "timm/mobilenetv3_small_050"])
def test_random_init_features_have_the_declared_size(name: str) -> None:
    bb = create_backbone(name, weights="none", seed=0)
    assert bb.weights == "none" and bb.plugin.replace("_", "-") == "te-timm"
    x = torch.randn(2, *bb.preprocess.input_size)
    features = bb(x)
    assert features.shape == (2, bb.feature_dim)
    again = create_backbone(name, weights="none", seed=0)
    torch.testing.assert_close(again(x), features)  # seeded: reproducible


def test_preprocessing_equals_timms_eval_transform_on_a_real_photo() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    photo = Image.fromarray(skimage_data.chelsea())
    for arch, tag in [("resnet50", "a1_in1k"), ("resnet18", "tv_in1k"), ("vit_tiny_patch16_224", "augreg_in21k_ft_in1k")]:
        theirs = create_transform(**resolve_data_config({}, pretrained_cfg=get_pretrained_cfg(f"{arch}.{tag}").to_dict()))
        ours = get_backbone_spec(f"timm/{arch}").preprocess_for(tag).transform()
        torch.testing.assert_close(ours(photo), theirs(photo), atol=1e-6, rtol=0)


def test_te_extract_with_random_weights(tmp_path) -> None:
    r = te("extract", "--backbone", "timm/resnet18", "--weights", "none", "--data", "builtin:digits",
           "--cache", str(tmp_path / "cache"), "--limit", "6", "--precision", "fp32", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["backbone"] == "timm/resnet18" and summary["extracted"] == 6 and not summary["failed"]


# (4) Weights: the user's hub cache, a local file, or one clear error.


def test_weights_come_from_the_hugging_face_cache_without_network(tmp_path, monkeypatch, full_resnet18_state) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any download attempt would now be an error
    put_in_hub_cache(tmp_path / "hub", "timm/resnet18.a1_in1k", "model.safetensors", full_resnet18_state)
    bb = create_backbone("timm/resnet18", weights="resnet18.a1_in1k")  # timm's full name works too
    assert bb.weights == "a1_in1k"
    state = bb.model.state_dict()
    assert not any(k.startswith("fc.") for k in state)
    assert all(torch.equal(state[k], full_resnet18_state[k]) for k in state)

    # The same checkpoint as a local file: --weights PATH drops the classifier keys and loads the rest.
    path = tmp_path / "resnet18_full.pth"
    torch.save(full_resnet18_state, path)
    from_file = create_backbone("timm/resnet18", weights=str(path))
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(from_file(x), bb(x))


def test_missing_weights_offline_are_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as exc:
        create_backbone("timm/resnet18")  # the default: timm's a1_in1k weights
    message = str(exc.value)
    assert "resnet18.a1_in1k" in message and str(tmp_path / "empty-hub") in message
    assert "--weights none" in message and "--weights PATH" in message and "\n" not in message


# (5) te's conformance check passes for the plugin.


def test_te_plugins_check_passes(tmp_path) -> None:
    r = te("plugins", "check", "te-timm", "--backbone", "timm/mobilenetv3_small_050", "--json",
           env={"XDG_CACHE_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(r.stdout)
    assert report["passed"] and report["counts"]["fail"] == 0
    checks = {(c["name"], c["check"]): c["status"] for c in report["checks"]}
    for check in ("preprocess", "build", "forward", "onnx"):
        assert checks[("timm/mobilenetv3_small_050", check)] == "pass"
    assert checks[("", "names")] == "pass"
