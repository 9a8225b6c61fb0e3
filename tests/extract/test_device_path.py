"""The device path of te extract: decode, preprocess, onnxruntime and quantization where the model runs.

Every test runs on the CPU (the same code with device "cpu") and again on a CUDA device when one is
present (marked `cuda`; tests/conftest.py skips them without one). On the CPU torchvision's decoder is
libjpeg-turbo, as PIL's is, so pixels must be PIL's exactly; nvjpeg on a GPU is another decoder, held
to a closeness bound instead (docs/gpu.md says it has not been measured on a GPU yet).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from transfer_engine.data.decode import ImageTooLargeError
from transfer_engine.data.decode import decode_image as pil_decode
from transfer_engine.extract.device_decode import decode_batch, preprocess_batch

# torchvision 0.29 deprecates its image decoders (docs/gpu.md); they still work.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
# nvjpeg is not libjpeg-turbo (its IDCT and chroma upsampling differ): mean |difference| in levels.
NVJPEG_MEAN_LEVELS = 2.0


def encode(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def pil_pixels(data: bytes) -> torch.Tensor:
    """te's PIL path: the reference pixels, uint8 [3, H, W] on the CPU."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(pil_decode(data))


@pytest.fixture(scope="module")
def photos():
    """Real photos (skimage) at a few sizes, one of them grayscale."""
    from PIL import Image
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    return {"astronaut": astronaut, "chelsea": Image.fromarray(data.chelsea()),
            "coffee_odd": Image.fromarray(data.coffee()).resize((333, 217)),
            "astronaut_small": astronaut.resize((96, 128)), "camera": Image.fromarray(data.camera())}


@pytest.fixture(scope="module")
def jpegs(photos):
    """JPEGs as cameras and the web write them: 4:2:0 and 4:4:4, progressive, grayscale."""
    return {"baseline": encode(photos["chelsea"], "JPEG", quality=90),
            "baseline_444": encode(photos["astronaut"], "JPEG", quality=95, subsampling=0),
            "baseline_odd_size": encode(photos["coffee_odd"], "JPEG", quality=80),
            "baseline_small": encode(photos["astronaut_small"], "JPEG"),
            "progressive": encode(photos["astronaut"], "JPEG", progressive=True),
            "grayscale": encode(photos["camera"], "JPEG")}


@pytest.fixture(scope="module")
def others(photos):
    """What is not a baseline RGB/gray JPEG: PNG in every colour type, CMYK JPEG, 16-bit PNG, BMP, GIF, WebP."""
    from PIL import Image

    rgba = np.asarray(photos["chelsea"].convert("RGBA")).copy()
    rgba[..., 3] = np.arange(rgba.shape[1])[None, :] % 256  # alpha that varies: convert("RGB") drops it
    deep = (np.asarray(photos["camera"]).astype(np.uint16) * 257)
    return {"png_rgb": encode(photos["chelsea"], "PNG"),
            "png_rgba": encode(Image.fromarray(rgba), "PNG"),
            "png_palette": encode(photos["chelsea"].convert("P", palette=Image.ADAPTIVE), "PNG"),
            "png_gray": encode(photos["camera"], "PNG"),
            "png_16bit": encode(Image.fromarray(deep), "PNG"),
            "jpeg_cmyk": encode(photos["chelsea"].convert("CMYK"), "JPEG"),
            "bmp": encode(photos["astronaut_small"], "BMP"),
            "gif": encode(photos["astronaut_small"], "GIF"),
            "webp": encode(photos["astronaut_small"], "WEBP", quality=90)}


def mean_levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.cpu().int() - b.cpu().int()).abs().float().mean().item()


@pytest.mark.parametrize("device", DEVICES)
def test_jpegs_decode_to_pils_pixels_on_the_device(device, jpegs):
    names = list(jpegs)
    decoded = decode_batch([jpegs[n] for n in names], torch.device(device))
    for name, pixels in zip(names, decoded):
        reference = pil_pixels(jpegs[name])
        assert isinstance(pixels, torch.Tensor), f"{name}: {pixels!r}"
        assert pixels.device.type == device and pixels.dtype == torch.uint8 and pixels.shape == reference.shape
        if device == "cpu":  # libjpeg-turbo both: the same pixels
            assert torch.equal(pixels, reference), name
        else:
            assert mean_levels(pixels, reference) <= NVJPEG_MEAN_LEVELS, name


@pytest.mark.parametrize("device", DEVICES)
def test_other_formats_decode_to_what_convert_rgb_gives(device, others):
    names = list(others)
    decoded = decode_batch([others[n] for n in names], torch.device(device))
    for name, pixels in zip(names, decoded):
        assert isinstance(pixels, torch.Tensor), f"{name}: {pixels!r}"
        assert pixels.device.type == device
        assert torch.equal(pixels.cpu(), pil_pixels(others[name])), name


@pytest.mark.parametrize("device", DEVICES)
def test_a_bad_file_is_one_failure_and_the_others_decode(device, jpegs, others):
    good = jpegs["baseline"]
    truncated = good[: len(good) // 2]
    batch = [good, truncated, b"\xff\xd8\xff" + b"not a jpeg" * 10, others["png_rgb"], b"", jpegs["grayscale"]]
    decoded = decode_batch(batch, torch.device(device))
    assert [isinstance(d, Exception) for d in decoded] == [False, True, True, False, True, False]
    for data, pixels in zip(batch, decoded):
        if isinstance(pixels, torch.Tensor):
            assert pixels.device.type == device and pixels.shape == pil_pixels(data).shape
    with pytest.raises(OSError) as on_pil_path:  # the failure reads as it does on te's PIL path
        pil_decode(truncated)
    assert f"{type(decoded[1]).__name__}: {decoded[1]}" == f"{on_pil_path.type.__name__}: {on_pil_path.value}"


@pytest.mark.parametrize("device", DEVICES)
def test_an_image_over_the_pixel_budget_is_refused_before_decoding(device, jpegs, photos, monkeypatch):
    import torchvision.io

    handed = []
    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg",
                        lambda encoded, **kw: handed.extend(e.numel() for e in encoded) or real(encoded, **kw))
    monkeypatch.setenv("TE_MAX_IMAGE_PIXELS", str(200 * 200))
    large = jpegs["baseline_444"]  # 512 x 512
    decoded = decode_batch([jpegs["baseline_small"], large, encode(photos["astronaut"], "PNG")], torch.device(device))
    assert isinstance(decoded[0], torch.Tensor)
    assert isinstance(decoded[1], ImageTooLargeError) and isinstance(decoded[2], ImageTooLargeError)
    assert "megapixels" in str(decoded[1]) and "TE_MAX_IMAGE_PIXELS" in str(decoded[1])
    assert handed == [len(jpegs["baseline_small"])]  # the large file never reached the decoder


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_never_decodes_more_pixels_at_once_than_the_budget_in_flight(device, photos, monkeypatch):
    import torchvision.io

    calls = []
    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda encoded, **kw: calls.append(len(encoded)) or real(encoded, **kw))
    monkeypatch.setenv("TE_MAX_IMAGE_PIXELS", str(100 * 128))  # two 96 x 128 images fit in flight, not three
    photo = encode(photos["astronaut_small"], "JPEG")
    decoded = decode_batch([photo] * 5, torch.device(device))
    assert all(isinstance(d, torch.Tensor) for d in decoded)
    assert calls == [2, 2, 1]


def _torch_resampler_spec():
    from transfer_engine.backbones.spec import PreprocessSpec

    if "resampler" not in PreprocessSpec.__dataclass_fields__:
        pytest.skip("PreprocessSpec has no resampler field in this checkout")
    return PreprocessSpec(crop_size=64, resize_size=72, resampler="torch")


@pytest.mark.parametrize("device", DEVICES)
def test_preprocessing_on_the_device_gives_the_pil_paths_model_input(device, jpegs):
    spec = _torch_resampler_spec()
    datas = [jpegs[n] for n in ("baseline", "baseline_odd_size", "grayscale")]
    batch = preprocess_batch(decode_batch(datas, torch.device(device)), spec)
    transform = spec.transform()
    reference = torch.stack([transform(pil_decode(d)) for d in datas])
    assert batch.device.type == device and batch.dtype == torch.float32 and batch.shape == (3, 3, 64, 64)
    if device == "cpu":
        assert torch.equal(batch, reference)
    else:  # nvjpeg's pixels, and the GPU's resize: close to the CPU's, not equal
        assert (batch.cpu() - reference).abs().mean().item() <= NVJPEG_MEAN_LEVELS / 255 / min(spec.std)
    assert preprocess_batch([], spec).shape == (0, 3, 64, 64)


def tiny_graph(path, *, symbolic_dim: bool = False, channels: int = 8):
    """A small convolutional backbone as te exports one: "images" [batch, 3, S, S] -> "features" [batch, dim]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(channels).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["features"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "S", "S"])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "dim" if symbolic_dim else channels])],
        [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def ort_engine(path, device: str):
    from transfer_engine.extract import engines
    from transfer_engine.onnx.runtime import ort_available

    if not ort_available(torch.device(device)):
        pytest.skip(f"onnxruntime has no provider for {device}")
    return engines.OrtEngine(path, torch.device(device))


@pytest.mark.parametrize("symbolic_dim", [False, True], ids=["declared-dim", "dim-from-first-run"])
@pytest.mark.parametrize("device", DEVICES)
def test_io_binding_gives_session_runs_features_on_the_device(device, symbolic_dim, tmp_path):
    engine = ort_engine(tiny_graph(tmp_path / "tiny.onnx", symbolic_dim=symbolic_dim), device)
    for n in (4, 3):  # the second call binds a preallocated output whatever the first learnt
        x = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))
        features = engine(x.to(device))
        (reference,) = engine.session.run({"images": x.numpy()}, ["features"])
        assert features.device.type == device and features.dtype == torch.float32 and features.shape == (n, 8)
        if device == "cpu":
            assert torch.equal(features, torch.from_numpy(reference))
        else:
            torch.testing.assert_close(features.cpu(), torch.from_numpy(reference), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_the_device_path_computes_the_pil_paths_features(device, jpegs, tmp_path):
    spec = _torch_resampler_spec()
    engine = ort_engine(tiny_graph(tmp_path / "tiny.onnx"), device)
    datas = list(jpegs.values())
    features = engine(preprocess_batch(decode_batch(datas, torch.device(device)), spec))
    transform = spec.transform()
    (reference,) = engine.session.run({"images": torch.stack([transform(pil_decode(d)) for d in datas]).numpy()})
    assert features.device.type == device
    if device == "cpu":
        assert torch.equal(features, torch.from_numpy(reference))
    else:
        torch.testing.assert_close(features.cpu(), torch.from_numpy(reference), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_features_on_the_device_are_quantized_there_and_stored_as_from_the_cpu(device, tmp_path):
    from transfer_engine import ops
    from transfer_engine.cache import FeatureCache
    from transfer_engine.cache.space import FeatureSpace

    features = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    on_device = features.to(device)
    encoded = ops.encode_rows(on_device, "int8")
    assert encoded.device.type == device  # quantized where the features are: only the int8 rows cross
    assert torch.equal(encoded.cpu(), ops.encode_rows(features, "int8"))
    keys = [f"{i:064x}" for i in range(5)]
    space = FeatureSpace(backbone="tiny", weights_digest="0" * 64, transform={}, dim=16)
    with FeatureCache.open(tmp_path / "cache", create=True) as cache:
        cached = cache.space(space)
        assert cached.append(keys, on_device) == 5
        assert torch.equal(cached.gather(keys), ops.dequantize_rows_int8(*ops.quantize_rows_int8(features)))


def test_the_pipeline_decoding_on_the_device_extracts_what_its_threads_do(jpegs):
    """te extract on a GPU decodes each batch there (decode_on_device); the same code on the CPU gives the
    features of the thread path, and a bad file is still one failure of its batch."""
    import dataclasses

    from transfer_engine.backbones import create_backbone
    from transfer_engine.data.decode import decode_tensor
    from transfer_engine.extract.pipeline import FeatureExtractor, Item

    bb = create_backbone("mobilenet_v3_small", weights="none", seed=0)
    bb.preprocess = dataclasses.replace(bb.preprocess, resampler="torch")
    datas = [jpegs["baseline"], b"not an image", jpegs["baseline_odd_size"], jpegs["progressive"]]
    items = [Item(f"k{i}", f"p{i}.jpg", (lambda d=d: decode_tensor(d)), (lambda d=d: d)) for i, d in enumerate(datas)]
    cpu = torch.device("cpu")
    threads = list(FeatureExtractor(bb, cpu, batch_size=2).run(items))
    device = list(FeatureExtractor(bb, cpu, batch_size=2, decode_on_device=True).run(items))
    assert [b.keys for b in device] == [b.keys for b in threads] == [["k0"], ["k2", "k3"]]
    assert [f["path"] for b in device for f in b.failed] == ["p1.jpg"]
    for a, b in zip(threads, device):
        assert torch.allclose(a.features, b.features, atol=1e-5)
