"""`--backend auto`: the fastest way to compute features that stays within bound, chosen once per cache.

The speeds are the machine's; so that these tests hold on any CPU, the ones that need one backend to be
faster set the measured speeds (the features compared are always really computed by both backends).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.errors import TEError, UsageError
from transfer_engine.extract import backend as backend_mod
from transfer_engine.extract import engines
from transfer_engine.onnx.runtime import ort_available


def make_folder(root, n, start=0):
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        path = root / ("even" if i % 2 == 0 else "odd") / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def run(data, cache, **kw):
    from transfer_engine.extract import extract

    # the resampler pinned: its auto decision is timed per cache, and these tests compare caches' spaces
    return extract("tiny_cnn", str(data), cache, weights="none", progress=False, **{"resampler": "pil", **kw})


@pytest.fixture
def speeds(monkeypatch):
    """Set the img/s each backend 'measures'; the features are still computed for real."""
    table = {}
    real = backend_mod._timed

    def timed(engine, batch):
        features, measured = real(engine, batch)
        return features, table.get(engine.backend, measured)

    monkeypatch.setattr(backend_mod, "_timed", timed)
    return table


def cache_state(cache_dir):
    from transfer_engine.cache import FeatureCache

    with FeatureCache.open(cache_dir, create=False) as cache:
        space = cache.spaces()[0]
        return cache.info()["artifacts"], cache.provenance(space.id), cache.verify()


needs_ort = pytest.mark.skipif(not ort_available(torch.device("cpu")), reason="onnxruntime not installed")


@needs_ort
def test_auto_picks_the_faster_backend_within_bound_and_a_rerun_reuses_decision_and_model(
        tiny_backbone, speeds, tmp_path, monkeypatch):
    speeds.update({"torch": 10.0, "onnxruntime": 40.0})
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 10)
    first = run(data, cache)
    assert (first.backend, first.precision) == ("onnxruntime", "fp32")
    assert "onnxruntime fp32 40.0 img/s" in first.precision_reason and "torch fp32 10.0 img/s" in first.precision_reason
    assert first.backend_measured["onnxruntime fp32"]["min_cosine"] >= backend_mod.SAME_SPACE_BOUND
    stored, provenance, report = cache_state(cache)
    assert len(stored) == 1 and stored[0]["name"].startswith("onnx-backbone:tiny_cnn:")
    assert provenance["backends"] == ["onnxruntime"] and report.ok
    model = cache / stored[0]["file"]
    mtime = model.stat().st_mtime_ns

    def no_calibration(*args, **kwargs):
        raise AssertionError("a remembered decision must not be measured again")

    monkeypatch.setattr(backend_mod, "_calibrate", no_calibration)
    make_folder(data, 3, start=10)
    second = run(data, cache)
    assert second.backend == "onnxruntime" and second.precision_reason.endswith("(remembered)")
    assert (second.extracted, second.reused) == (3, 10)
    assert model.stat().st_mtime_ns == mtime  # the exported model was reused, not written again
    assert second.space == first.space


@needs_ort
def test_onnxruntime_features_are_the_same_space_as_torch_fp32(tiny_backbone, speeds, tmp_path):
    # the backend is provenance, not identity: a space filled by either backend holds the same features
    data = tmp_path / "data"
    make_folder(data, 8)
    speeds.update({"torch": 10.0, "onnxruntime": 40.0})
    by_ort = run(data, tmp_path / "c1")
    by_torch = run(data, tmp_path / "c2", backend="torch")
    assert (by_ort.backend, by_torch.backend) == ("onnxruntime", "torch")
    assert by_ort.space == by_torch.space
    a, b = (_features(tmp_path / c) for c in ("c1", "c2"))
    assert torch.nn.functional.cosine_similarity(a, b, dim=1).min() >= 0.999  # int8 storage of equal features


def _features(cache_dir):
    from transfer_engine.cache import FeatureCache

    with FeatureCache.open(cache_dir, create=False) as cache:
        ds = cache.dataset("data")
        return torch.as_tensor(np.asarray(cache.space(cache.spaces()[0]).gather(ds.keys())))


@needs_ort
def test_a_faster_backend_whose_features_differ_is_not_used_and_its_model_not_kept(
        tiny_backbone, speeds, tmp_path, monkeypatch):
    speeds.update({"torch": 10.0, "onnxruntime": 40.0})
    real_call = engines.OrtEngine.__call__
    monkeypatch.setattr(engines.OrtEngine, "__call__",
                        lambda self, x: real_call(self, x) + 0.05 * torch.randn(x.shape[0], 8))
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 6)
    summary = run(data, cache)
    assert (summary.backend, summary.precision) == ("torch", "fp32")
    assert "onnxruntime fp32 (min cosine" in summary.precision_reason and "< 0.99999" in summary.precision_reason
    stored, provenance, report = cache_state(cache)
    assert stored == [] and provenance["backends"] == ["torch"] and report.ok and not report.notes
    with pytest.raises(TEError, match=r"--backend onnxruntime: min cosine .* < 0.99999; use --backend torch"):
        run(data, tmp_path / "other", backend="onnxruntime")


@needs_ort
def test_a_backbone_that_cannot_be_exported_falls_back_to_torch_with_the_reason(tiny_backbone, tmp_path,
                                                                                 monkeypatch):
    from transfer_engine.onnx import export as onnx_export

    def cannot(*args, **kwargs):
        raise onnx_export.ExportError("torch.onnx could not export the model: unsupported operator aten::foo")

    monkeypatch.setattr(onnx_export, "export_backbone", cannot)
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 4)
    summary = run(data, cache)
    assert summary.backend == "torch" and summary.extracted == 4
    assert "onnxruntime fp32 (failed: torch.onnx could not export the model: unsupported operator aten::foo)" \
        in summary.precision_reason
    assert cache_state(cache)[0] == []
    with pytest.raises(TEError, match="--backend onnxruntime: failed: torch.onnx could not export"):
        run(data, tmp_path / "other", backend="onnxruntime")


@needs_ort
def test_a_damaged_exported_model_is_named_by_verify_never_used_and_rebuilt(tiny_backbone, speeds, tmp_path):
    speeds.update({"torch": 10.0, "onnxruntime": 40.0})
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 4)
    run(data, cache)
    stored = cache_state(cache)[0]
    model = cache / stored[0]["file"]
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    report = cache_state(cache)[2]
    assert not report.ok
    assert [p.shard for p in report.problems] == [stored[0]["file"]]
    assert "SHA-256 differs" in report.problems[0].message
    make_folder(data, 2, start=4)
    again = run(data, cache)
    assert again.backend == "onnxruntime" and again.extracted == 2
    assert cache_state(cache)[2].ok  # exported again under the same name: the damaged bytes are gone


@needs_ort
def test_a_decision_is_made_again_on_another_machine(tiny_backbone, speeds, tmp_path, monkeypatch):
    speeds.update({"torch": 10.0, "onnxruntime": 40.0})
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 4)
    assert run(data, cache).backend == "onnxruntime"
    speeds.update({"torch": 50.0})
    real = backend_mod.machine_fingerprint
    monkeypatch.setattr(backend_mod, "machine_fingerprint", lambda d: {**real(d), "cpu": "another CPU"})
    make_folder(data, 1, start=4)
    moved = run(data, cache)
    assert moved.backend == "torch" and "(remembered)" not in moved.precision_reason
    assert cache_state(cache)[0] == []  # the model no run here uses is not kept


def test_requests_that_cannot_hold_are_usage_errors():
    cpu = torch.device("cpu")
    with pytest.raises(UsageError, match="--backend onnxruntime computes fp32"):
        backend_mod.candidates(cpu, "onnxruntime", "bf16")
    with pytest.raises(UsageError, match="fp16 needs a CUDA device"):
        backend_mod.candidates(cpu, "auto", "fp16")
    with pytest.raises(UsageError, match="--backend must be one of auto, torch, onnxruntime"):
        backend_mod.candidates(cpu, "tensorrt", "auto")


def test_cpu_candidates_start_with_the_reference_and_follow_the_machine():
    cpu = torch.device("cpu")
    labels = [c.label for c in backend_mod.candidates(cpu)]
    assert labels[0] == "torch fp32"
    assert ("torch bf16" in labels) == backend_mod.cpu_has_native_bf16()
    assert ("onnxruntime fp32" in labels) == ort_available(cpu)
    assert [c.label for c in backend_mod.candidates(cpu, "torch", "fp32")] == ["torch fp32"]


@pytest.mark.cuda
def test_on_a_gpu_auto_keeps_features_within_bound_of_cpu_fp32(tiny_backbone, tmp_path):
    data = tmp_path / "data"
    make_folder(data, 8)
    gpu = run(data, tmp_path / "g", device="cuda")
    assert gpu.device.startswith("cuda")
    labels = set(gpu.backend_measured)
    assert {"torch fp16"} <= labels and "torch fp32" in labels
    assert all(m["ok"] == (m.get("min_cosine", 0) >= m["bound"]) for m in gpu.backend_measured.values())
    cpu = run(data, tmp_path / "c", device="cpu", backend="torch", precision="fp32")
    cos = torch.nn.functional.cosine_similarity(_features(tmp_path / "g"), _features(tmp_path / "c"), dim=1)
    assert cos.min() >= backend_mod.PRECISION_BOUND
