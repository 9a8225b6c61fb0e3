"""Reading a data set from where large data sets live: tar shards, Parquet and an S3 server, against a folder.

The same N real images (scikit-learn's handwritten digits drawn at 96 px with a per-image offset, so every
file differs, as JPEGs of a few KB: the size of an img2dataset sample) are written as a CLASS/IMAGE folder,
as webdataset tar shards of 1,000 samples, as one Parquet file, and uploaded as those shards to moto's
S3-compatible server started on 127.0.0.1 in a process of its own. Timed, in this one process, what te extract does
to every image before any model runs, through te's own sources:

    folder      the walk, each file read and hashed (the content key), then read again for the decode
                (what te extract does for a new image of a folder: the second read is from the page cache)
    shards      every shard streamed front to back, each sample's bytes hashed and kept for the decode
    parquet     the same from record batches of the Parquet file (informational)
    s3 shards   the shards streamed from the S3 server over HTTP (one GET per shard, read ahead)

Targets (issue 37): local shards cost no more than the folder (rate >= 1.0x the folder's), and the S3
server is within 1.5x of local shards (rate >= 0.67x). Warm page cache; moto is a Python server, so the S3
figure is an upper bound of the protocol's cost, not of a real store's.

    python benchmarks/bench_data_sources.py [--images 10000] [--repeat 3] [--quick] [--json PATH]

`--quick` 2,000 images; TE_BENCH_SMOKE=1: 200.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from _results import add_suite_options, pick_sizes, result_row, write_results
from transfer_engine.core.digest import content_key
from transfer_engine.data.sources import open_source

QUICK = {"images": 2000, "repeat": 3}
FULL = {"images": 10000, "repeat": 3}
SMOKE = {"images": 200, "repeat": 1}
PER_SHARD = 1000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=None, metavar="N", help="images (default 10000)")
    parser.add_argument("--repeat", type=int, default=None, metavar="R", help="timed passes per source (median)")
    add_suite_options(parser, "2,000 images")
    args = parser.parse_args(argv)
    pick_sizes(args, full=FULL, quick=QUICK, smoke=SMOKE)
    return args


def real_jpegs(n: int) -> list[tuple[bytes, int]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(n):
        j = i % len(digits.images)
        canvas = np.zeros((96, 96), dtype=np.uint8)
        dx, dy = (i // len(digits.images)) % 24, (i // (24 * len(digits.images))) % 24
        glyph = np.asarray(Image.fromarray((digits.images[j] * 16).astype(np.uint8)).resize((72, 72)))
        canvas[dy:dy + 72, dx:dx + 72] = glyph
        buf = io.BytesIO()
        Image.fromarray(canvas).convert("RGB").save(buf, "JPEG", quality=90)
        out.append((buf.getvalue(), int(digits.target[j])))
    return out


def write_all(root: Path, images: list[tuple[bytes, int]]) -> dict[str, Path]:
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder, shards = root / "folder", root / "shards"
    for i, (data, label) in enumerate(images):
        path = folder / str(label) / f"{i:07d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    shards.mkdir()
    for first in range(0, len(images), PER_SHARD):
        with tarfile.open(shards / f"train-{first // PER_SHARD:06d}.tar", "w") as tar:
            for i in range(first, min(first + PER_SHARD, len(images))):
                for name, data in ((f"{i:07d}.jpg", images[i][0]), (f"{i:07d}.cls", str(images[i][1]).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"image": [d for d, _ in images], "label": [lbl for _, lbl in images]}),
                   root / "images.parquet", row_group_size=PER_SHARD)
    return {"folder": folder, "shards": shards, "parquet": root / "images.parquet"}


def read_folder(spec: str) -> int:
    """te extract's reads of a folder for new images: read + hash, then the decode's read + hash check."""
    source = open_source(spec)
    n = 0
    for sample in source.samples():
        key = content_key(source.read_bytes(sample))
        assert content_key(source.read_bytes(sample)) == key
        n += 1
    return n


def read_parts(spec: str) -> int:
    """te extract's reads of parts: each streamed once, every sample hashed (its bytes kept for the decode)."""
    n = 0
    for record in open_source(spec).records():
        if record.data is not None:
            content_key(record.data)
            n += 1
    return n


def timed(read, spec: str, repeat: int, expected: int) -> float:
    rates = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = read(spec)
        rates.append(n / (time.perf_counter() - t0))
        assert n == expected, f"{spec}: read {n} of {expected} images"
    return statistics.median(rates)


def s3_copy(shards: Path):
    """moto's S3 server in a process of its own on 127.0.0.1 (in this process it would share the GIL with
    the reader it serves), holding the shards; returns (server process, URL)."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(200):  # up within seconds
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=endpoint)
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.mkdir("bench")
    for path in sorted(shards.iterdir()):
        fs.put(str(path), f"bench/shards/{path.name}")
    s3fs.S3FileSystem.clear_instance_cache()  # the reads make their own, for this server
    return server, "s3://bench/shards/"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images = real_jpegs(args.images)
    rows = []
    with tempfile.TemporaryDirectory(prefix="te-bench-sources-") as tmp:
        paths = write_all(Path(tmp), images)
        n = len(images)
        folder = timed(read_folder, str(paths["folder"]), args.repeat, n)
        shards = timed(read_parts, str(paths["shards"]), args.repeat, n)
        parquet = timed(read_parts, str(paths["parquet"]), args.repeat, n)
        s3 = None
        try:
            server, url = s3_copy(paths["shards"])
        except ImportError as exc:
            print(f"s3 rows skipped: {exc} (pip install 'moto[server]' s3fs)", file=sys.stderr)
        else:
            try:
                s3 = timed(read_parts, url, args.repeat, n)
            finally:
                server.terminate()
                server.wait()
    mean_kb = sum(len(d) for d, _ in images) / n / 1024
    print(f"{n} JPEGs of {mean_kb:.1f} KB on average; img/s: folder {folder:.0f}, tar shards {shards:.0f}, "
          f"parquet {parquet:.0f}" + (f", s3 shards {s3:.0f}" if s3 else ""), file=sys.stderr)
    rows.append(result_row(f"reading {n} images: local tar shards vs the same images in a folder", shards, folder,
                           "img/s", shards / folder, ">= 1.0x"))
    rows.append(result_row(f"reading {n} images: Parquet vs the same images in a folder (informational)", parquet,
                           folder, "img/s", parquet / folder))
    if s3 is not None:
        rows.append(result_row(f"reading {n} images: tar shards from a local S3 server (moto) vs local tar shards",
                               s3, shards, "img/s", s3 / shards, ">= 0.67x",
                               note="within 1.5x of local shards; moto is a Python server"))
    for row in rows:
        print(f"{row['name']}: {row['te']:.0f} vs {row['baseline']:.0f} img/s = {row['ratio']:.2f}x"
              + (f" (target {row['target']}: {'met' if row['met'] else 'NOT met'})" if row["target"] else ""))
    if args.json:
        write_results(args.json, "data_sources", rows, {"images": n, "repeat": args.repeat, "per_shard": PER_SHARD,
                                                         "mean_kb": round(mean_kb, 2), "quick": args.quick,
                                                         "smoke": os.environ.get("TE_BENCH_SMOKE") == "1"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
