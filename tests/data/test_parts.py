"""Data sets stored as parts: webdataset tar shards, Parquet files and `datasets` saved folders.

The parts are written by the tools that write them in the field (webdataset's TarWriter, pyarrow,
`datasets`' save_to_disk and to_parquet), from real images (scikit-learn's handwritten digits), and read
back by te's sources: the same images, labels and splits, the same content keys as from a folder, and
every bad part or sample skipped with its reason instead of ending the read.
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from transfer_engine.core.digest import content_key
from transfer_engine.data.remote import expand_braces
from transfer_engine.data.sources import default_dataset_name, open_source
from transfer_engine.errors import UsageError

wds = pytest.importorskip("webdataset")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PER_SHARD = 12
SHARDS = 3


def digit_pngs(n: int) -> list[tuple[bytes, int]]:
    """The first n scikit-learn digits as 24x24 PNG bytes, with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(n):
        img = Image.fromarray((digits.images[i] * 16).astype(np.uint8)).resize((24, 24)).convert("RGB")
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out.append((buf.getvalue(), int(digits.target[i])))
    return out


@pytest.fixture(scope="module")
def images():
    return digit_pngs(PER_SHARD * SHARDS)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, images):
    """Three webdataset shards (png + cls + json), as img2dataset-style tools write them."""
    root = tmp_path_factory.mktemp("shards")
    for s in range(SHARDS):
        with wds.TarWriter(str(root / f"train-{s:06d}.tar")) as sink:
            for i in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                data, label = images[i]
                sink.write({"__key__": f"{i:06d}", "png": data, "cls": str(label),
                            "json": {"label": f"digit-{label}"}, "txt": f"a handwritten {label}"})
    return root


def test_brace_patterns_expand_as_shells_and_webdataset_do():
    assert expand_braces("s/train-{000..002}.tar") == ["s/train-000.tar", "s/train-001.tar", "s/train-002.tar"]
    assert expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    with pytest.raises(UsageError, match="neither a range"):
        expand_braces("s/{000}.tar")


def test_tar_shards_stream_every_sample_with_its_label_and_origin(shards, images):
    source = open_source(str(shards / "train-{000000..000002}.tar"))
    assert [p.name for p in source.parts()] == [f"train-{s:06d}.tar" for s in range(SHARDS)]
    records = list(source.records())
    assert [r.data for r in records] == [data for data, _ in images]
    assert [r.sample.label for r in records] == [str(label) for _, label in images]  # the cls member
    assert records[13].sample.path == "train-000001.tar#000013.png"
    assert source.class_names == sorted({str(label) for _, label in images}, key=int)
    assert default_dataset_name(source, str(shards / "train-{000000..000002}.tar")) == shards.name
    # One sample read by its origin (te finetune and te export read images one at a time).
    sample = list(source.samples())[20]
    assert source.read_bytes(sample) == images[20][0]


def test_a_folder_a_list_file_and_a_pattern_name_the_same_shards(shards, images):
    listing = shards / "shards.txt"
    listing.write_text("# my shards\n" + "\n".join(f"train-{s:06d}.tar" for s in range(SHARDS)) + "\n")
    keys = {spec: [content_key(r.data) for r in open_source(spec).records()]
            for spec in (str(shards), str(listing), str(shards / "train-{000000..000002}.tar"))}
    assert len({tuple(v) for v in keys.values()}) == 1
    assert keys[str(shards)] == [content_key(data) for data, _ in images]


def test_keys_for_te_finetune_come_from_one_streaming_pass(shards, images, tmp_path):
    """te finetune matches the cache's records to images by content key: parts hash what they stream
    (no second read per sample), and agree with a folder of the same images."""
    source = open_source(str(shards))
    keyed = list(source.keyed_samples(with_labels=False))
    assert [key for _, key in keyed] == [content_key(data) for data, _ in images]
    labelled = list(source.keyed_samples())
    assert [source.class_names[s.label] for s, _ in labelled] == [str(label) for _, label in images]


def test_label_field_chooses_the_member(shards, images):
    by_json = list(open_source(str(shards), label_field="json:label").records())
    assert by_json[0].sample.label == f"digit-{images[0][1]}"
    by_txt = list(open_source(str(shards), label_field="txt").records())
    assert by_txt[0].sample.label == f"a handwritten {images[0][1]}"
    with pytest.raises(UsageError, match="cls, txt or json:FIELD"):
        open_source(str(shards), label_field="caption")


def test_bad_shards_and_samples_are_skipped_with_a_reason(tmp_path, images):
    good = tmp_path / "good-0.tar"
    with wds.TarWriter(str(good)) as sink:
        for i in range(4):
            sink.write({"__key__": f"{i:04d}", "png": images[i][0], "cls": str(images[i][1])})
        sink.write({"__key__": "0004", "cls": "3"})  # no image member
        sink.write({"__key__": "0005", "png": images[5][0]})  # no label
    whole = good.read_bytes()
    (tmp_path / "good-1.tar").write_bytes(whole[: len(whole) // 2])  # truncated mid-way
    records = list(open_source(str(tmp_path / "good-{0..1}.tar")).records())
    usable = [r for r in records if r.data is not None]
    reasons = [r.reason for r in records if r.data is None]
    assert len(usable) >= 4 + 1  # the whole shard's 4, and the truncated one's samples before the cut
    assert any("no image member" in r for r in reasons)
    assert any(r.startswith("no label") for r in reasons)
    assert any("truncated" in r for r in reasons)  # the cut shard: its earlier samples kept, the rest reported


@pytest.mark.parametrize("fmt,suffix", [(tarfile.GNU_FORMAT, ".tar"), (tarfile.PAX_FORMAT, ".tar"),
                                        (tarfile.USTAR_FORMAT, ".tar.gz")])
def test_long_member_names_and_gzipped_shards_read_as_tarfile_writes_them(tmp_path, images, fmt, suffix):
    folder = "a-folder-name-long-enough-that-the-member-path-passes-the-100-bytes-of-a-plain-header/" * (
        1 if fmt == tarfile.USTAR_FORMAT else 2)
    path = tmp_path / f"long-0{suffix}"
    with tarfile.open(path, "w:gz" if suffix.endswith("gz") else "w", format=fmt) as tar:
        for i in range(3):
            for name, data in ((f"{folder}{i:04d}.png", images[i][0]), (f"{folder}{i:04d}.cls", str(images[i][1]).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    records = list(open_source(str(path)).records())
    assert [r.data for r in records] == [images[i][0] for i in range(3)]
    assert records[2].sample.path == f"long-0{suffix}#{folder}0002.png"


def test_a_member_over_the_size_limit_is_skipped_unread(tmp_path, images, monkeypatch):
    path = tmp_path / "big-0.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in (("0000.png", images[0][0]), ("0000.cls", b"1")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("TE_MAX_FILE_BYTES", "100")
    (record,) = open_source(str(path)).records()
    assert record.data is None and "over the limit" in record.reason


def test_parquet_rows_stream_with_labels_and_row_origins(tmp_path, images):
    table = pa.table({"image": [d for d, _ in images], "label": [lbl for _, lbl in images],
                      "split": ["train" if i % 3 else "test" for i in range(len(images))]})
    pq.write_table(table, tmp_path / "digits.parquet", row_group_size=10)
    source = open_source(str(tmp_path / "digits.parquet"))
    records = list(source.records())
    assert [r.data for r in records] == [d for d, _ in images]
    assert records[7].sample.path == "digits.parquet#7" and records[3].sample.split == "test"
    assert source.read_bytes(list(source.samples())[25]) == images[25][0]  # row group 2, row 5


def test_a_saved_hugging_face_dataset_gives_its_splits_and_class_names(tmp_path, images):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"d{i}" for i in range(10)])})

    def part(rows):
        return datasets.Dataset.from_dict({"image": [{"bytes": d, "path": None} for d, _ in rows],
                                           "label": [lbl for _, lbl in rows]}, features=features)

    saved = tmp_path / "hf"
    datasets.DatasetDict({"train": part(images[:24]), "test": part(images[24:])}).save_to_disk(str(saved))
    source = open_source(str(saved))
    assert source.class_names == [f"d{i}" for i in range(10)]  # the ClassLabel's names, all ten
    records = list(source.records())
    assert [r.sample.split for r in records] == ["train"] * 24 + ["test"] * 12
    assert [r.sample.label for r in records] == [f"d{lbl}" for _, lbl in images]
    assert [content_key(r.data) for r in records] == [content_key(d) for d, _ in images]
    # The same data set as the Hub stores it (Parquet with the features in its metadata), without `datasets`.
    part(images).to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    hub = open_source(str(tmp_path / "train-00000-of-00001.parquet"))
    assert hub.class_names == source.class_names
    assert {r.sample.split for r in hub.records()} == {"train"}  # from the file name, as the Hub names them


def test_parts_that_cannot_be_reached_are_listed_with_the_reason(tmp_path, shards):
    source = open_source(f"{shards}/train-{{000000..000003}}.tar")  # one shard more than there are
    assert len(source.parts()) == SHARDS
    (missing,) = source.skipped()
    assert missing["path"] == "train-000003.tar" and "cannot read the part" in missing["reason"]
    with pytest.raises(UsageError, match="no class folders"):
        open_source(str(tmp_path))  # an empty folder: no parts, and no class folders either


def test_unlabelled_shards_and_tables_are_images_to_predict_on(tmp_path, images):
    """te predict and te export's --*-data read images without labels: parts keep them (label None)."""
    from transfer_engine.data.unlabelled import open_images

    with wds.TarWriter(str(tmp_path / "new-0.tar")) as sink:
        for i in range(5):
            sink.write({"__key__": f"{i:04d}", "png": images[i][0]})
    pq.write_table(pa.table({"image": [d for d, _ in images[:5]]}), tmp_path / "new.parquet")
    for spec in (str(tmp_path / "new-0.tar"), str(tmp_path / "new.parquet")):
        source = open_images(spec)
        samples = list(source.samples())
        assert [s.label for s in samples] == [None] * 5
        assert [source.read_bytes(s) for s in samples] == [d for d, _ in images[:5]]
    # To train on (te extract), a sample needs a label: the shard's are skipped with the reason, the table refused.
    assert {r.reason.split(" (")[0] for r in open_source(str(tmp_path / "new-0.tar")).records()} == {"no label"}
    with pytest.raises(UsageError, match="no label column"):
        open_source(str(tmp_path / "new.parquet"))
