"""te extract over parts (tar shards, Parquet), locally and from an S3 server the test starts itself.

What a user of large data sets relies on: the same images give the same cache rows and the same
features whether they come from a folder, a tar shard, a Parquet row or an object store; a finished
shard is never read again; a job killed with SIGKILL resumes by reading only the shards it had not
finished; and memory does not grow with the number of samples.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

wds = pytest.importorskip("webdataset")

FIXED = dict(backend="torch", precision="fp32", resampler="pil", workers=1, progress=False)  # no measured choice
PER_SHARD = 16


def real_images(n: int) -> list[tuple[bytes, int]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray((digits.images[i] * 16).astype(np.uint8)).resize((32, 32)).convert("RGB").save(buf, "PNG")
        out.append((buf.getvalue(), int(digits.target[i])))
    return out


def write_shards(root: Path, images, per_shard: int = PER_SHARD) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(0, len(images), per_shard):
        with wds.TarWriter(str(root / f"part-{s // per_shard:04d}.tar")) as sink:
            for i in range(s, min(s + per_shard, len(images))):
                sink.write({"__key__": f"{i:06d}", "png": images[i][0], "cls": str(images[i][1])})
    return root


def write_folder(root: Path, images) -> Path:
    for i, (data, label) in enumerate(images):
        path = root / str(label) / f"{i:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def features_by_key(cache_dir: Path, summary) -> dict[str, np.ndarray]:
    from transfer_engine.cache import FeatureCache

    with FeatureCache.open(cache_dir) as cache:
        dataset = cache.dataset(summary.dataset)
        keys = [r.key for r in dataset.records]
        rows = cache.open_space(summary.space).gather(keys).numpy()
        labels = {r.key: dataset.class_names[r.label] for r in dataset.records}
    return {k: (row, labels[k]) for k, row in zip(keys, rows)}


def same_features(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0])
        assert a[key][1] == b[key][1]


@pytest.fixture(scope="module")
def images():
    return real_images(4 * PER_SHARD)


def test_shards_and_parquet_give_the_features_of_the_same_images_in_a_folder(tiny_backbone, tmp_path, images):
    from transfer_engine.extract import extract

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    folder = extract(tiny_backbone, str(write_folder(tmp_path / "folder", images)), tmp_path / "c-folder", **FIXED)
    shards_dir = write_shards(tmp_path / "shards", images)
    pattern = str(shards_dir / "part-{0000..0003}.tar")
    shards = extract(tiny_backbone, pattern, tmp_path / "c-shards", **FIXED)
    assert shards.parts == {"total": 4, "read": 4, "skipped_finished": 0}
    assert (shards.total, shards.extracted, shards.classes) == (len(images), len(images), folder.classes)
    assert shards.splits == folder.splits  # splits derive from the content, wherever it is stored
    same_features(features_by_key(tmp_path / "c-folder", folder), features_by_key(tmp_path / "c-shards", shards))

    pq.write_table(pa.table({"image": [d for d, _ in images], "label": [lbl for _, lbl in images]}),
                   tmp_path / "digits.parquet", row_group_size=20)
    table = extract(tiny_backbone, str(tmp_path / "digits.parquet"), tmp_path / "c-shards", **FIXED)
    assert (table.extracted, table.reused) == (0, len(images))  # the same content keys: no row computed twice

    again = extract(tiny_backbone, pattern, tmp_path / "c-shards", **FIXED)
    assert again.parts == {"total": 4, "read": 0, "skipped_finished": 4}  # finished shards are not read again
    assert (again.total, again.reused, again.splits) == (shards.total, shards.total, shards.splits)


def test_bad_samples_in_shards_are_listed_with_the_reason_and_the_rest_is_extracted(tiny_backbone, tmp_path, images):
    from transfer_engine.extract import extract

    root = tmp_path / "shards"
    root.mkdir()
    with wds.TarWriter(str(root / "part-0000.tar")) as sink:
        for i in range(6):
            sink.write({"__key__": f"{i:06d}", "png": images[i][0], "cls": str(images[i][1])})
        sink.write({"__key__": "broken", "jpg": b"not a JPEG at all", "cls": "1"})  # named like an image
        sink.write({"__key__": "nolabel", "png": images[7][0]})
    whole = (root / "part-0000.tar").read_bytes()
    (root / "part-0001.tar").write_bytes(whole[:len(whole) // 3])  # truncated
    summary = extract(tiny_backbone, str(root), tmp_path / "c", **FIXED)
    reasons = {f["path"]: f["reason"] for f in summary.failed}
    assert "part-0000.tar#broken.jpg" in reasons  # did not decode
    assert reasons["part-0000.tar#nolabel.png"].startswith("no label")
    assert "truncated" in reasons["part-0001.tar"]
    assert summary.extracted == 6 and summary.parts["read"] == 2  # and the truncated shard's own samples
    # A damaged shard is finished too (its failures recorded): a re-run reports them without reading it.
    again = extract(tiny_backbone, str(root), tmp_path / "c", **FIXED)
    assert again.parts["skipped_finished"] == 2 and {f["path"]: f["reason"] for f in again.failed} == reasons


# A stand-in for a slow remote shard: the child hangs when it starts reading the shard named in argv[1],
# until the test kills it with SIGKILL.
HANGING = """
import sys, time
from transfer_engine.data import tars
plain = tars.TarShards.part_records
def part_records(self, part):
    if part.name == sys.argv[1]:
        time.sleep(3600)
    yield from plain(self, part)
tars.TarShards.part_records = part_records
from transfer_engine.cli.main import main
sys.exit(main(sys.argv[2:]))
"""

TINY = ["--backbone", "tiny_cnn", "--weights", "none", "--backend", "torch", "--precision", "fp32",
        "--resampler", "pil", "--batch-size", "8", "--workers", "1"]


def test_a_killed_job_resumes_reading_only_the_shards_it_had_not_finished(good_plugin_site, tmp_path, images):
    shards_dir = write_shards(tmp_path / "shards", images, per_shard=8)  # 8 shards of 8
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(good_plugin_site), os.environ.get("PYTHONPATH")]))}
    args = ["extract", *TINY, "--data", str(shards_dir), "--cache", str(cache), "--json"]
    child = subprocess.Popen([sys.executable, "-c", HANGING, "part-0005.tar", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        # Shards 0-4 are read, 5 hangs: the first shards finish as their batches are stored (the last ones
        # read may wait in a batch that shard 5 would have filled).
        while time.monotonic() < deadline and len(list(cache.glob("parts/*/*.json.gz"))) < 2:
            assert child.poll() is None, "the run ended before the hanging shard"
            time.sleep(0.2)
        time.sleep(1)
        assert child.poll() is None, "the run ended before the hanging shard"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    finished = len(list(cache.glob("parts/*/*.json.gz")))
    assert 2 <= finished <= 5
    proc = subprocess.run([sys.executable, "-m", "transfer_engine", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    # Only the shards without a ledger entry were read; the others' records came from the cache.
    assert summary["parts"] == {"total": 8, "read": 8 - finished, "skipped_finished": finished}
    assert summary["total"] == len(images) and summary["failed"] == []
    assert summary["extracted"] + summary["reused"] == len(images)


@pytest.fixture
def s3_server(monkeypatch):
    """A real S3-compatible server (moto's) on 127.0.0.1, for the length of one test."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_ENDPOINT_URL", f"http://{host}:{port}")):
        monkeypatch.setenv(name, value)
    import s3fs

    # fsspec keeps one instance per class and arguments (each class its own cache): an S3FileSystem made for
    # an earlier test's server, now stopped, must not be handed to this one.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield s3fs.S3FileSystem()
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def test_shards_at_an_s3_url_give_the_features_of_the_same_images_in_a_folder(tiny_backbone, tmp_path, images,
                                                                             s3_server):
    from transfer_engine.extract import extract

    shards_dir = write_shards(tmp_path / "shards", images)
    s3_server.mkdir("data")
    for path in sorted(shards_dir.iterdir()):
        s3_server.put(str(path), f"data/train/{path.name}")
    folder = extract(tiny_backbone, str(write_folder(tmp_path / "folder", images)), tmp_path / "c-folder", **FIXED)
    remote = extract(tiny_backbone, "s3://data/train/part-{0000..0003}.tar", tmp_path / "c-s3", **FIXED)
    assert remote.parts["read"] == 4 and remote.dataset == "train"
    same_features(features_by_key(tmp_path / "c-folder", folder), features_by_key(tmp_path / "c-s3", remote))
    # A prefix names the same shards; finished ones are recognized by their etag and size, unread.
    again = extract(tiny_backbone, "s3://data/train/", tmp_path / "c-s3", name="train-again", **FIXED)
    assert again.parts == {"total": 4, "read": 0, "skipped_finished": 4}


def test_two_processes_under_torchrun_take_whole_shards_and_build_the_one_process_data_set(good_plugin_site, tmp_path,
                                                                                         images):
    """Rank r reads shards r, r + 2, ...: the data set's records come out in shard order all the same."""
    from transfer_engine.cache import FeatureCache

    shards_dir = write_shards(tmp_path / "shards", images[:40], per_shard=8)  # 5 shards: the ranks get 3 and 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(good_plugin_site), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    args = ["extract", *TINY, "--data", str(shards_dir), "--json"]
    one = subprocess.run([sys.executable, "-m", "transfer_engine", *args, "--cache", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                          "transfer_engine", *args, "--cache", str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    summary = json.loads(two.stdout)
    assert summary["parts"] == {"total": 5, "read": 5, "skipped_finished": 0} and summary["total"] == 40
    records = {}
    for name in ("one", "two"):
        with FeatureCache.open(tmp_path / name) as cache:
            dataset = cache.dataset("shards")
            records[name] = [(r.path, r.key, dataset.class_names[r.label], r.split) for r in dataset.records]
    assert records["two"] == records["one"]
    assert [path for path, *_ in records["two"]][:9] == [f"part-0000.tar#{i:06d}.png" for i in range(8)] + [
        "part-0001.tar#000008.png"]


def test_an_image_folder_and_a_manifest_at_an_s3_url_give_the_features_of_the_local_folder(tiny_backbone, tmp_path,
                                                                                          images, s3_server):
    """No shards needed: CLASS/IMAGE under a prefix, or a manifest beside the images, read in parts of files
    (each image fetched once), finished parts skipped by a re-run."""
    from transfer_engine.extract import extract

    local = write_folder(tmp_path / "folder", images)
    s3_server.mkdir("photos")
    rows = ["path,label"]
    for path in sorted(local.rglob("*.png")):
        rel = path.relative_to(local).as_posix()
        s3_server.put(str(path), f"photos/digits/{rel}")
        rows.append(f"{rel},{path.parent.name}")
    manifest = tmp_path / "list.csv"
    manifest.write_text("\n".join(rows) + "\n")
    s3_server.put(str(manifest), "photos/digits/list.csv")
    want = extract(tiny_backbone, str(local), tmp_path / "c-local", **FIXED)
    folder = extract(tiny_backbone, "s3://photos/digits/", tmp_path / "c-s3", **FIXED)
    assert (folder.total, folder.classes, folder.splits) == (want.total, want.classes, want.splits)
    same_features(features_by_key(tmp_path / "c-local", want), features_by_key(tmp_path / "c-s3", folder))
    listed = extract(tiny_backbone, "s3://photos/digits/list.csv", tmp_path / "c-s3", **FIXED)
    assert (listed.total, listed.extracted, listed.reused) == (want.total, 0, want.total)
    assert listed.parts["read"] == 1
    again = extract(tiny_backbone, "s3://photos/digits/", tmp_path / "c-s3", **FIXED)
    assert again.parts == {"total": 1, "read": 0, "skipped_finished": 1}
    # A manifest at a URL is checked as a local one is, with the same one line.
    from transfer_engine.data.sources import open_source
    from transfer_engine.errors import UsageError

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label,split\n" + rows[1] + ",holdout\n")
    s3_server.put(str(bad), "photos/digits/bad.csv")
    with pytest.raises(UsageError, match=r"line 2 \(.*\) has split 'holdout'; use train, val or test"):
        open_source("s3://photos/digits/bad.csv")
