"""What resizes the images (`--resampler`) is part of the feature space, and every step that computes
features from images afterwards resizes the same way: te finetune, te export's checks and te predict
take it from the run, so a model is never trained on one preprocessing and served with another.

The photos are real (skimage's), saved as JPEGs of a few sizes, so the resize does real work.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.backbones import create_backbone
from transfer_engine.backbones.calibration import row_cosines
from transfer_engine.backbones.spec import PreprocessSpec
from transfer_engine.cache import FeatureCache
from transfer_engine.data.decode import decode_image, decode_tensor
from transfer_engine.errors import UsageError
from transfer_engine.extract import extract
from transfer_engine.onnx.metadata import read_metadata
from transfer_engine.extract.resampler import MIN_SPEEDUP, RESAMPLER_BOUND, choose_resampler

BACKBONE = "mobilenet_v3_small"  # seeded random weights: cheap, and every resize difference reaches the features


def _photo_arrays() -> list[np.ndarray]:
    skimage_data = pytest.importorskip("skimage.data")
    photos = [skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee(), skimage_data.rocket()]
    return [p[..., :3] for p in photos]


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Two classes of real photos as JPEGs (crops, 180 to 512 px a side), split train/val/test."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    photos = _photo_arrays()
    for i in range(18):
        split = ("train", "train", "val", "test", "train", "val")[i % 6]
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(rng.integers(180, h)), int(rng.integers(180, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        folder = root / split / ("person" if i % 2 else "thing")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(photo[y:y + ch, x:x + cw])).save(folder / f"{i:02d}.jpg", quality=90)
    return root


def _jpeg(array: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_the_reference_resampler_leaves_the_spec_and_its_space_ids_as_they_were():
    spec = PreprocessSpec(224, 256, "bicubic")
    assert "resampler" not in spec.to_dict()  # spaces made before the field keep their ids
    torch_spec = dataclasses.replace(spec, resampler="torch")
    assert torch_spec.to_dict()["resampler"] == "torch"
    assert PreprocessSpec.from_dict(torch_spec.to_dict()) == torch_spec
    with pytest.raises(ValueError, match="nearest"):
        PreprocessSpec(224, 256, "nearest", resampler="torch")


def test_tensor_decoding_gives_pils_pixels():
    """torchvision.io and PIL both decode with libjpeg-turbo / libpng: the same pixels, whichever decodes."""
    photo = _photo_arrays()[1]
    gray = np.ascontiguousarray(photo[..., 0])
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 128, np.uint8)], -1)
    cases = {"jpeg": _jpeg(photo), "progressive jpeg": _jpeg(photo, progressive=True), "gray jpeg": _jpeg(gray)}
    for name, array, mode in (("png", photo, "RGB"), ("rgba png", rgba, "RGBA"), ("palette png", photo, "P")):
        buf = io.BytesIO()
        image = Image.fromarray(array)
        (image.convert(mode) if mode == "P" else image).save(buf, "PNG")
        cases[name] = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(buf, "JPEG", quality=90)
    cases["cmyk jpeg"] = buf.getvalue()
    for name, data in cases.items():
        tensor = decode_tensor(data)
        expected = torch.from_numpy(np.array(decode_image(data))).permute(2, 0, 1)
        assert tensor.dtype == torch.uint8 and tensor.shape == expected.shape, name
        assert torch.equal(tensor, expected), name


def _pairs(n: int = 4) -> list:
    return [(None, _jpeg(np.ascontiguousarray(p))) for p in _photo_arrays()[:n]]


def _decode(sample, data, tensor):
    return decode_tensor(data) if tensor else decode_image(data)


def test_auto_keeps_a_resampler_only_within_bound_and_remembers_the_decision(tmp_path):
    bb = create_backbone(BACKBONE, weights="none", seed=0)
    with FeatureCache.open(tmp_path / "cache") as cache:
        choice = choose_resampler("auto", bb, cache, _pairs, _decode)
        entry = choice.measured["torch"]
        if entry["ms_per_image"] * MIN_SPEEDUP <= choice.measured["pil"]["ms_per_image"]:  # features checked
            assert entry["ok"] == (entry["min_cosine"] >= RESAMPLER_BOUND)
        else:  # not clearly faster: never chosen, and its features are not computed
            assert not entry["ok"] and "min_cosine" not in entry
        assert choice.resampler == "pil" or entry["ok"]
        assert set(choice.measured) == {"pil", "torch"} and choice.reason.startswith(f"auto: {choice.resampler}")

        def no_calibration():
            raise AssertionError("a remembered decision measures nothing")

        again = choose_resampler("auto", bb, cache, no_calibration, _decode)
        assert again.resampler == choice.resampler and again.reason.endswith("(remembered)")


def test_a_cache_holding_pil_features_keeps_them_and_nearest_stays_with_pil(tmp_path):
    from transfer_engine.cache import FeatureSpace

    bb = create_backbone(BACKBONE, weights="none", seed=0)
    with FeatureCache.open(tmp_path / "cache") as cache:
        cache.space(FeatureSpace(**bb.space_fields()))  # what an older te, or --resampler pil, left there
        choice = choose_resampler("auto", bb, cache, lambda: pytest.fail("nothing to measure"), _decode)
        assert choice.resampler == "pil" and "already holds" in choice.reason
    bb.preprocess = dataclasses.replace(bb.preprocess, interpolation="nearest")
    with FeatureCache.open(tmp_path / "other") as cache:
        assert choose_resampler("auto", bb, cache, _pairs, _decode).resampler == "pil"
        with pytest.raises(UsageError, match="nearest"):
            choose_resampler("torch", bb, cache, _pairs, _decode)


@pytest.mark.parametrize("resampler", ["pil", "torch"])
def test_finetune_export_and_predict_compute_the_features_extract_cached(tmp_path, photo_folder, resampler):
    from transfer_engine.export import export_onnx
    from transfer_engine.finetune.data import ImageSet, scaled_preprocess
    from transfer_engine.finetune.start import from_run
    from transfer_engine.predict.runner import predict
    from transfer_engine.runs.run import Run
    from transfer_engine.train.runner import train

    cache_dir = tmp_path / "cache"
    summary = extract(BACKBONE, str(photo_folder), cache_dir, weights="none", resampler=resampler, backend="torch",
                      precision="fp32", store="fp32", progress=False)
    assert summary.resampler == resampler and summary.resampler_reason == "asked for"
    assert summary.stages["compute"] > 0 and summary.stages["decode"] > 0  # where the time went
    train(cache_dir, "linear", out=tmp_path / "run", progress=False, space=summary.space)
    run = Run.open(tmp_path / "run")
    assert run.preprocess.resampler == resampler  # te train records how the features were made

    # te finetune --from RUN: its images become the very tensors te extract made
    start = from_run(tmp_path / "run")
    images = ImageSet(start.source, start.items, scaled_preprocess(start.preprocess, None), "none")
    bb = create_backbone(BACKBONE, weights="none", seed=0)
    bb.preprocess = dataclasses.replace(bb.preprocess, resampler=resampler)
    extract_transform = bb.transform()
    keys = [item.key for item in start.items]
    with FeatureCache.open(cache_dir) as cache:
        cached = cache.open_space(summary.space).gather(keys)
    for i, item in enumerate(start.items[:4]):
        data = start.source.read_bytes(item.sample)
        expected = extract_transform(start.source.decode(item.sample, data, resampler == "torch"))
        assert torch.equal(images[(i, None)][0], expected), item.sample.path
    finetune_features = bb(torch.stack([images[(i, None)][0] for i in range(len(start.items))]))
    assert float(row_cosines(cached, finetune_features).min()) >= 0.99999

    # te export writes the resampler into the model, and te predict preprocesses with it: its
    # probabilities are the head's on the cached features
    out = tmp_path / "model.onnx"
    export_onnx(tmp_path / "run", out, check_size=8, batch_sizes=(1,))
    assert read_metadata(out).preprocess_spec() == run.preprocess
    served = predict(out, str(photo_folder), top_k=2)
    assert served.predicted == len(keys) == 18
    with torch.no_grad():
        expected_probs = torch.softmax(run.build_head()(cached), dim=1)
    by_path = {p["path"]: p for p in served.predictions}
    classes = run.class_names
    for item, probs in zip(start.items, expected_probs):
        got = {c["class"]: c["probability"] for c in by_path[item.sample.path]["top_k"]}
        assert max(abs(got[name] - float(probs[j])) for j, name in enumerate(classes)) < 1e-3
