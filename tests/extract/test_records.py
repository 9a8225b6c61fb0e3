"""The data set `te extract` records: every record has a row, copies cost one extraction, bad files and
their copies are listed, not recorded."""

from __future__ import annotations

import numpy as np
from PIL import Image

from transfer_engine.cache import FeatureCache
from transfer_engine.extract import extract


def write_png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).save(path)


def test_copies_in_one_run_and_copies_of_a_bad_file(tiny_backbone, tmp_path):
    data = tmp_path / "data"
    for i in range(6):
        write_png(data / ("a" if i % 2 else "b") / f"{i}.png", i)
    (data / "b" / "copy_of_1.png").write_bytes((data / "a" / "1.png").read_bytes())
    good = (data / "a" / "1.png").read_bytes()
    (data / "a" / "bad.png").write_bytes(good[: len(good) // 2])  # truncated: hashes, never decodes
    (data / "b" / "copy_of_bad.png").write_bytes((data / "a" / "bad.png").read_bytes())

    summary = extract(tiny_backbone, str(data), tmp_path / "cache", weights="none", progress=False)

    assert (summary.total, summary.extracted, summary.reused) == (9, 6, 1)
    failed = {f["path"]: f["reason"] for f in summary.failed}
    assert set(failed) == {"a/bad.png", "b/copy_of_bad.png"}
    assert "a/bad.png" in failed["b/copy_of_bad.png"]  # says which file it is a copy of
    with FeatureCache.open(tmp_path / "cache", create=False) as cache:
        ds = cache.dataset("data")
        assert sorted(r.path for r in ds.records) == sorted(
            ["a/1.png", "a/3.png", "a/5.png", "b/0.png", "b/2.png", "b/4.png", "b/copy_of_1.png"])
        assert [r.path for r in ds.records] == sorted(r.path for r in ds.records)  # the folder's order
        features = cache.open_space(summary.space).gather(ds.keys())  # every record has its row
        assert features.shape == (7, 8)
        assert sum(summary.splits.values()) == 7
