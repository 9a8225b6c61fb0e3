"""`te extract` as users run it: incremental by content, bad files listed, clear errors, resumable,
and the same cache from one process or two (torchrun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.onnx.runtime import ort_available

TINY = ["--backbone", "tiny_cnn", "--weights", "none"]  # from tests/plugins/te-test-good: fast
# The tests that compare two caches bit for bit name the backend and the resampler: `auto` decides each
# per cache by timing, two backends compute the same space only within cosine 0.99999, not to the bit,
# and two resamplers make two spaces. onnxruntime when installed and torch's resize, so that resuming and
# torchrun are covered with the exported model and the faster resampler too.
ONE_BACKEND = ["--backend", "onnxruntime" if ort_available(torch.device("cpu")) else "torch", "--resampler", "torch"]


def make_folder(root, n, start=0, size=40):
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        cls = "even" if i % 2 == 0 else "odd"
        path = root / cls / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def extract_json(te, env, *args):
    r = te("extract", *TINY, *args, "--json", env=env)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout), r.stderr


@pytest.fixture
def env(good_plugin_site):
    return {"PYTHONPATH": str(good_plugin_site)}


def features_by_key(cache_dir, dataset):
    from transfer_engine.cache import FeatureCache

    with FeatureCache.open(cache_dir, create=False) as cache:
        ds = cache.dataset(dataset)
        (space_cfg,) = cache.spaces()
        space = cache.space(space_cfg)
        keys = ds.keys()
        return dict(zip(keys, space.gather(keys))), [(r.path, r.label, r.split) for r in ds.records]


def test_incremental_by_content_and_nothing_new_means_no_model_work(te, env, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 20)
    first, _ = extract_json(te, env, "--data", str(data), "--cache", str(cache))
    assert (first["total"], first["extracted"], first["reused"], first["failed"]) == (20, 20, 0, [])
    assert first["dataset"] == "data" and first["backbone"] == "tiny_cnn" and len(first["space"]) == 64
    assert set(first) >= {"seconds", "images_per_second"}
    make_folder(data, 2, start=20)
    second, _ = extract_json(te, env, "--data", str(data), "--cache", str(cache))
    assert (second["extracted"], second["reused"], second["space"]) == (2, 20, first["space"])
    r = te("extract", *TINY, "--data", str(data), "--cache", str(cache), env=env)
    assert r.code == 0 and "nothing new" in r.stdout and "no model work" in r.stdout
    # a copy of an image under another name is the same content: reused, not extracted again
    (data / "odd" / "copy.png").write_bytes((data / "odd" / "img0001.png").read_bytes())
    third, _ = extract_json(te, env, "--data", str(data), "--cache", str(cache))
    assert (third["extracted"], third["reused"], third["total"]) == (0, 23, 23)


@pytest.fixture
def tiny_in_process(good_plugin_site, monkeypatch):
    """The test plugin's tiny_cnn registered in this process (the Python API, no `te` start-up)."""
    from transfer_engine.backbones import registry

    monkeypatch.syspath_prepend(str(good_plugin_site))
    registry.reload()
    yield
    registry.reload()


def test_another_stored_dtype_or_weights_is_a_new_space_never_a_mix(tiny_in_process, tmp_path):
    # through the Python API: what te extract runs, without three `te` start-ups (the CLI's own
    # handling of the same options is covered by the tests around this one)
    from transfer_engine.cache import FeatureCache
    from transfer_engine.extract import extract

    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 6)
    runs = [extract("tiny_cnn", str(data), cache, weights="none", progress=False, **kw)
            for kw in ({}, {"store": "fp16"}, {"seed": 1})]
    assert len({r.space for r in runs}) == 3
    assert [r.extracted for r in runs] == [6, 6, 6]
    with FeatureCache.open(cache, create=False) as opened:
        assert len(opened.spaces()) == 3


def test_bad_files_are_listed_and_skipped_and_strict_fails(te, env, tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    make_folder(data, 4)
    good = (data / "even" / "img0000.png").read_bytes()
    (data / "even" / "truncated.png").write_bytes(good[: len(good) // 3])
    (data / "odd" / "notes.jpg").write_text("this is not an image")
    summary, err = extract_json(te, env, "--data", str(data), "--cache", str(cache))
    assert summary["extracted"] == 4 and summary["total"] == 6
    assert sorted(f["path"] for f in summary["failed"]) == ["even/truncated.png", "odd/notes.jpg"]
    assert all(f["reason"] for f in summary["failed"])
    assert "warning: 2 file(s) skipped" in err
    r = te("extract", *TINY, "--data", str(data), "--cache", str(cache), "--strict", env=env)
    assert r.code == 1 and "--strict" in r.stderr and "Traceback" not in r.stderr
    records = features_by_key(cache, "data")[1]
    assert len(records) == 4  # failed files are not in the data set


@pytest.mark.parametrize("args,code,message", [
    (["--data", "{tmp}/missing"], 2, "no such file or folder"),
    (["--data", "{tmp}/empty"], 2, "holds no images"),
    (["--data", "{tmp}/bad.csv"], 2, "line 2"),
    (["--data", "builtin:digits", "--backbone", "resnt18"], 2, "did you mean: resnet18"),
    (["--data", "builtin:digits", "--device", "cuda"], 2, "no CUDA device"),
])
def test_input_errors_are_one_line_with_the_right_exit_code(te, env, tmp_path, args, code, message):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "bad.csv").write_text("path,label\n,cat\n")
    if torch.cuda.is_available() and "cuda" in args:
        pytest.skip("a CUDA device is visible")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    backbone = [] if "--backbone" in args else ["--backbone", "tiny_cnn"]
    r = te("extract", *backbone, "--weights", "none", *args, "--cache", str(tmp_path / "c"), env=env)
    assert r.code == code, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr


def test_unavailable_weights_download_is_one_clear_error(te, tmp_path):
    proxy = "http://127.0.0.1:9"  # nothing listens there: the download fails at once
    env = {"TORCH_HOME": str(tmp_path / "torch"), "https_proxy": proxy, "HTTPS_PROXY": proxy,
           "http_proxy": proxy, "HTTP_PROXY": proxy, "no_proxy": "", "NO_PROXY": ""}
    r = te("extract", "--backbone", "resnet18", "--data", "builtin:digits", "--cache", str(tmp_path / "c"),
           "--limit", "4", env=env)
    assert r.code == 1
    assert "--weights none" in r.stderr and "Traceback" not in r.stderr


def test_python_api_returns_the_summary(tmp_path, good_plugin_site, monkeypatch):
    from transfer_engine.backbones import registry
    from transfer_engine.extract import extract

    monkeypatch.syspath_prepend(str(good_plugin_site))
    registry.reload()
    try:
        summary = extract("tiny_cnn", "builtin:digits", tmp_path / "c", weights="none", limit=30, progress=False)
    finally:
        registry.reload()
    assert (summary.total, summary.extracted, summary.dataset) == (30, 30, "digits")
    assert sum(summary.splits.values()) == 30 and summary.classes == 10


def wait_for_rows(cache_dir, at_least, proc, timeout=120):
    from transfer_engine.cache import FeatureCache

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with FeatureCache.open(cache_dir, create=False) as cache:
                if sum(len(cache.space(s)) for s in cache.spaces()) >= at_least:
                    return True
        except Exception:
            pass
        time.sleep(0.05)
    return False


IMAGES_TO_KILL = 600


def test_kill_9_mid_run_then_the_same_command_resumes_to_the_uninterrupted_result(te, env, tmp_path):
    data = tmp_path / "data"
    # Enough images that the run is still going when the watcher sees its first 40 rows: with 240 the tiny
    # model finished them (~0.6 s) before a poll on a busy machine, and the test failed without a kill.
    make_folder(data, IMAGES_TO_KILL, size=24)
    args = [*TINY, *ONE_BACKEND, "--data", str(data), "--batch-size", "4", "--workers", "1"]
    full_env = {**os.environ, **env}
    proc = subprocess.Popen([sys.executable, "-m", "transfer_engine", "extract", *args, "--cache",
                             str(tmp_path / "killed")], env=full_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    reached = wait_for_rows(tmp_path / "killed", 40, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert reached, "the run finished before it could be killed; make the data set larger"
    resumed, _ = extract_json(te, env, *args[len(TINY):], "--cache", str(tmp_path / "killed"))
    assert resumed["reused"] >= 40 and resumed["extracted"] + resumed["reused"] == IMAGES_TO_KILL
    straight, _ = extract_json(te, env, *args[len(TINY):], "--cache", str(tmp_path / "straight"))
    assert straight["extracted"] == IMAGES_TO_KILL
    got, got_records = features_by_key(tmp_path / "killed", "data")
    want, want_records = features_by_key(tmp_path / "straight", "data")
    assert got_records == want_records
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key
    assert te("cache", "verify", str(tmp_path / "killed")).code == 0


def test_two_processes_under_torchrun_build_the_same_cache_as_one(te, env, tmp_path):
    data = tmp_path / "data"
    make_folder(data, 30)
    one, _ = extract_json(te, env, *ONE_BACKEND, "--data", str(data), "--cache", str(tmp_path / "one"))
    full_env = {**os.environ, **env}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
         "transfer_engine", "extract", *TINY, *ONE_BACKEND, "--data", str(data), "--cache", str(tmp_path / "two"),
         "--json"],
        env=full_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout)
    assert (two["extracted"], two["total"], two["space"]) == (30, 30, one["space"])
    got, got_records = features_by_key(tmp_path / "two", "data")
    want, want_records = features_by_key(tmp_path / "one", "data")
    assert got_records == want_records
    for key in want:
        assert torch.equal(got[key], want[key]), key
