"""The te-efficientnet-lite plugin as a user meets it: installed, found by te, building a backbone whose
features come from real ImageNet weights with the preprocessing those weights expect, and exporting to ONNX.

Real images only: scikit-image's bundled photos (offline). ImageNet class names come from torchvision's
weights metadata (offline) so a failure reads "tabby" rather than 281.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import te_efficientnet_lite
from te_efficientnet_lite import FEATURE_DIM, NAME, PREPROCESS, VARIANTS, build_classifier, weights_path
from transfer_engine.backbones import create_backbone, get_backbone_spec, list_backbones, registry
from transfer_engine.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

DISTRIBUTION = "te-efficientnet-lite"
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def _normalized(name: str | None) -> str:
    # Distribution names compare after PEP 503 normalization (setuptools may write either spelling).
    return (name or "").replace("_", "-").lower()


def _categories() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V2.meta["categories"]


def _photo(name: str) -> Image.Image:
    # scikit-image is the `test` extra; its photos ship inside the package. Only the tests that need
    # photos skip without it, discovery is still checked.
    skimage_data = pytest.importorskip("skimage.data")
    return Image.fromarray(getattr(skimage_data, name)())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Whether two models hold identical parameters and buffers under the same names."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _batch(names: list[str], preprocess: PreprocessSpec) -> torch.Tensor:
    transform = preprocess.transform()
    return torch.stack([transform(_photo(n)) for n in names])


@pytest.fixture(scope="module")
def backbone():
    return create_backbone(NAME)


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return build_classifier()


@pytest.fixture(scope="module")
def photos(backbone) -> torch.Tensor:
    """Chelsea the cat and a cup of coffee, prepared with the backbone's own transform."""
    transform = backbone.transform()
    return torch.stack([transform(_photo("chelsea")), transform(_photo("coffee"))])


# (1) te finds the plugin through its entry point and knows where it came from.


def test_entry_point_is_discovered_and_attributed() -> None:
    assert NAME in list_backbones()
    assert NAME in list_backbones("efficientnet_lite*")
    spec, record = registry.lookup(NAME)
    assert _normalized(record.distribution) == DISTRIBUTION, record
    assert record.version == te_efficientnet_lite.__version__
    assert record.status == "ok", record.error
    assert get_backbone_spec(NAME) is spec
    assert spec.feature_dim == FEATURE_DIM == 1280
    assert spec.weights == ("imagenet",) and spec.default_weights == "imagenet"
    assert spec.classifier_prefixes == ("_fc.",)
    assert spec.preprocess_for("imagenet") == PREPROCESS


def test_listing_does_not_build_or_import_the_model() -> None:
    # `te backbones` must stay fast: discovering the plugin may not import the model code.
    code = (
        "import sys\n"
        "from transfer_engine.backbones import list_backbones\n"
        f"assert {NAME!r} in list_backbones()\n"
        "print(sorted(m for m in ('efficientnet_lite_pytorch', 'te_efficientnet_lite._model') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"listing imported the model code: {result.stdout}"


# (2) create_backbone gives pooled features of the declared size.


def test_create_backbone_gives_pooled_features(backbone, photos: torch.Tensor) -> None:
    assert _normalized(backbone.plugin) == DISTRIBUTION
    assert backbone.weights == "imagenet"
    assert backbone.preprocess == PREPROCESS
    assert photos.shape == (2, 3, 224, 224)
    assert not backbone.model.training
    features = backbone(photos)
    assert features.shape == (2, FEATURE_DIM)
    assert torch.isfinite(features).all()
    # After ReLU6 and average pooling every feature lies in [0, 6]; a cat and a coffee cup differ.
    assert features.min() >= 0 and features.max() <= 6
    assert not torch.allclose(features[0], features[1], atol=1e-2)
    assert not any(k.startswith("_fc.") for k in backbone.model.state_dict()), "classifier not removed"


# (3) The weights are real ImageNet weights, and the features are what their classifier reads.


def test_imagenet_weights_recognise_real_photos(classifier: torch.nn.Module) -> None:
    categories = _categories()
    preprocess = get_backbone_spec(NAME).preprocess_for("imagenet")
    with torch.inference_mode():
        logits = classifier(_batch(["chelsea", "coffee"], preprocess))
    assert logits.shape == (2, 1000)
    top3 = logits.topk(3, dim=1).indices.tolist()
    named = [[f"{categories[i]} ({i})" for i in row] for row in top3]
    assert top3[0][0] in CAT_CLASSES, f"chelsea (a cat) top-3: {named[0]}"
    assert COFFEE_CLASSES & set(top3[1]), f"coffee top-3 has no espresso/cup/coffee mug: {named[1]}"


def test_features_are_the_classifier_input(backbone, classifier: torch.nn.Module, photos: torch.Tensor) -> None:
    # The feature module is the classifier minus its last Linear: nothing else was removed or changed.
    with torch.inference_mode():
        expected = classifier(photos)
        through_features = classifier._fc(backbone(photos))
    torch.testing.assert_close(through_features, expected, atol=1e-4, rtol=1e-4)


def test_preprocessing_matches_what_the_weights_were_trained_with(classifier: torch.nn.Module) -> None:
    # Both normalizations happen to classify Chelsea, so check the cause instead: on natural photos,
    # the stem conv's outputs should have the variance its BatchNorm saw in training. The TF-trained
    # weights expect inputs in [-1, 1] (mean = std = 0.5); torchvision's ImageNet mean/std inflates it ~4x.
    names = ["chelsea", "coffee", "astronaut", "rocket"]

    def variance_misfit(preprocess: PreprocessSpec) -> float:
        with torch.inference_mode():
            pre_bn = classifier._conv_stem(_batch(names, preprocess))
        running = classifier._bn0.running_var
        alive = running > 1e-4  # a few channels are dead (running_var 0) and say nothing
        ratio = pre_bn.var(dim=(0, 2, 3))[alive] / running[alive]
        return ratio.log().abs().mean().exp().item()  # geometric mean of max(r, 1/r)

    ours = variance_misfit(PREPROCESS)
    imagenet = variance_misfit(PreprocessSpec(224, 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD))
    assert ours < 2.0, f"stem activations are {ours:.2f}x off the BatchNorm statistics"
    assert ours < imagenet, (ours, imagenet)


def test_full_model_checkpoint_loads_as_local_weights(backbone, photos: torch.Tensor) -> None:
    # --weights PATH with a checkpoint of the whole classifier: te drops the "_fc." keys and loads the rest.
    from_file = create_backbone(NAME, weights=weights_path())
    assert from_file.weights == f"file:{Path(weights_path()).resolve()}"
    assert _same_weights(from_file.model, backbone.model)
    torch.testing.assert_close(from_file(photos), backbone(photos))


# (4) weights="none" really initializes at random (seeded).


def test_random_init_differs_from_pretrained(backbone, photos: torch.Tensor) -> None:
    random0 = create_backbone(NAME, weights="none", seed=0)
    assert random0.weights == "none" and random0.seed == 0
    assert not _same_weights(random0.model, backbone.model)
    features = random0(photos)
    assert features.shape == (2, FEATURE_DIM)
    assert not torch.allclose(features, backbone(photos), atol=1e-3)
    # Seeded: the same seed rebuilds the same model, another seed another one.
    assert _same_weights(create_backbone(NAME, weights="none", seed=0).model, random0.model)
    assert not _same_weights(create_backbone(NAME, weights="none", seed=1).model, random0.model)


def test_unknown_weights_name_is_refused() -> None:
    with pytest.raises(ValueError, match="imagenet"):
        build_classifier("imagenet21k")


# (4b) Lite1 and Lite2: their own input sizes and weights, each checked like Lite0 on real photos.


@pytest.mark.parametrize("name,size", [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_the_larger_variants_have_their_own_size_and_real_weights(name: str, size: int) -> None:
    spec, record = registry.lookup(name)
    assert record.status == "ok" and _normalized(record.distribution) == DISTRIBUTION
    assert spec.preprocess.crop_size == size and spec.preprocess.mean == PREPROCESS.mean
    assert spec.preprocess.resize_size > size  # a center crop, as the weights were evaluated
    classifier = build_classifier(name=name)
    with torch.inference_mode():
        top3 = classifier(_batch(["chelsea", "coffee"], spec.preprocess)).topk(3, dim=1).indices.tolist()
        features = create_backbone(name).model(_batch(["chelsea"], spec.preprocess))
    assert top3[0][0] in CAT_CLASSES and COFFEE_CLASSES & set(top3[1]), top3
    assert features.shape == (1, FEATURE_DIM)
    lite0 = {k: v.shape for k, v in build_classifier(None).state_dict().items()}
    assert {k: v.shape for k, v in classifier.state_dict().items()} != lite0  # wider / deeper, not Lite0 again
    assert set(VARIANTS) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


# (5) The feature module exports to ONNX and the graph computes the same features.


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore:Constant folding:UserWarning")
def test_onnx_export(backbone, photos: torch.Tensor, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "efficientnet_lite0.onnx"
    # The TorchScript exporter (deprecated, hence the filtered warnings): quick, and enough for a CNN;
    # the dynamo exporter would also need onnxscript, which te does not depend on.
    torch.onnx.export(
        backbone.model,
        (photos[:1],),
        str(path),
        dynamo=False,
        input_names=["images"],
        output_names=["features"],
        dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        opset_version=17,
    )
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    out_dims = graph.graph.output[0].type.tensor_type.shape.dim
    assert out_dims[1].dim_value == FEATURE_DIM

    try:
        import onnxruntime as ort
    except ImportError:  # te's `cpu`/`gpu` extra; without it the structural checks above are all we can do
        return
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_features,) = session.run(None, {"images": photos.numpy()})  # batch 2: the batch axis is dynamic
    torch.testing.assert_close(torch.from_numpy(onnx_features), backbone(photos), atol=1e-4, rtol=1e-4)
