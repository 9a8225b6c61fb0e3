"""--data sources: folder layouts, manifests, built-ins, content keys and the derived split."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from transfer_engine.data import content_key, derived_split, open_source
from transfer_engine.errors import UsageError


def write_image(path, seed=0, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_folder_without_splits(tmp_path):
    for i, cls in enumerate(["dog", "cat", "cat"]):
        write_image(tmp_path / cls / f"{i}.png", seed=i)
    (tmp_path / "cat" / "notes.txt").write_text("not an image, ignored")
    (tmp_path / ".hidden").mkdir()
    src = open_source(str(tmp_path))
    assert src.class_names == ["cat", "dog"]
    samples = list(src.samples())
    assert [(s.path, s.label, s.split) for s in samples] == [("cat/1.png", 0, None), ("cat/2.png", 0, None),
                                                              ("dog/0.png", 1, None)]
    assert src.decode(samples[0], src.read_bytes(samples[0])).size == (12, 10)


def test_folder_with_split_folders_and_nested_files(tmp_path):
    write_image(tmp_path / "train" / "a" / "x.png", 1)
    write_image(tmp_path / "train" / "b" / "deep" / "y.jpg", 2)
    write_image(tmp_path / "validation" / "a" / "z.png", 3)
    write_image(tmp_path / "test" / "c" / "w.png", 4)
    src = open_source(str(tmp_path))
    assert src.class_names == ["a", "b", "c"]
    got = [(s.path, src.class_names[s.label], s.split) for s in src.samples()]
    assert got == [("train/a/x.png", "a", "train"), ("train/b/deep/y.jpg", "b", "train"),
                   ("validation/a/z.png", "a", "val"), ("test/c/w.png", "c", "test")]


def test_csv_and_jsonl_manifests(tmp_path):
    write_image(tmp_path / "img" / "1.png", 1)
    write_image(tmp_path / "img" / "2.png", 2)
    (tmp_path / "m.csv").write_text("path,label,split\nimg/1.png,zebra,train\nimg/2.png,ant,TEST\n")
    src = open_source(str(tmp_path / "m.csv"))
    assert src.class_names == ["ant", "zebra"]
    assert [(s.path, s.label, s.split) for s in src.samples()] == [("img/1.png", 1, "train"), ("img/2.png", 0, "test")]
    lines = [{"path": "img/1.png", "label": 10}, {"path": "img/2.png", "label": 2, "split": "val"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    src = open_source(str(tmp_path / "m.jsonl"))
    assert src.class_names == ["2", "10"]  # integer labels sort as numbers
    assert [(s.label, s.split) for s in src.samples()] == [(1, None), (0, "val")]
    assert len(src.read_bytes(next(src.samples()))) > 0


@pytest.mark.parametrize("content,message", [
    ("path,label\nimg/1.png,\n", "line 2 (img/1.png) has no label"),
    ("path,label,split\nimg/1.png,a,holdout\n", "split 'holdout'"),
    ("file,label\nimg/1.png,a\n", "missing path"),
    ("path,label\n", "lists no images"),
])
def test_bad_manifest_rows_are_one_clear_error(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        open_source(str(tmp_path / "m.csv"))


def test_a_manifest_is_streamed_so_a_label_added_meanwhile_is_a_clear_error(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nimg/1.png,cat\nimg/2.png,dog\n")
    src = open_source(str(manifest))
    assert [s.path for s in src.samples()] == ["img/1.png", "img/2.png"]  # read again on each pass
    manifest.write_text("path,label\nimg/1.png,cat\nimg/3.png,bird\n")
    with pytest.raises(UsageError, match=r"line 3 has label 'bird'.*changed meanwhile"):
        list(src.samples())


def test_bad_jsonl_line(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "label": 1}\nnot json\n')
    with pytest.raises(UsageError, match="line 2 is not JSON"):
        open_source(str(tmp_path / "m.jsonl"))


def test_missing_or_unsupported_data(tmp_path):
    with pytest.raises(UsageError, match="no such file or folder"):
        open_source(str(tmp_path / "nope"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UsageError, match="expected a folder"):
        open_source(str(tmp_path / "x.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no class folders"):
        open_source(str(tmp_path / "empty"))


def test_truncated_image_fails_to_decode(tmp_path):
    write_image(tmp_path / "a" / "ok.png", size=(64, 64))
    data = (tmp_path / "a" / "ok.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(data[: len(data) // 2])
    src = open_source(str(tmp_path))
    cut = next(s for s in src.samples() if s.path.endswith("cut.png"))
    with pytest.raises(OSError):
        src.decode(cut, src.read_bytes(cut))


def test_keys_are_content_digests_and_builtin_keys_are_stable_and_unique():
    assert content_key(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    src = open_source("builtin:digits")
    keys = [content_key(src.read_bytes(s)) for s in src.samples()]
    assert len(keys) == len(set(keys)) == 1797
    again = open_source("builtin:digits")
    assert content_key(again.read_bytes(next(again.samples()))) == keys[0]


def test_derived_split_is_stable_and_roughly_stratified():
    src = open_source("builtin:digits")
    samples = list(src.samples())
    splits = [derived_split(content_key(src.read_bytes(s))) for s in samples]
    for label in range(10):
        mine = [sp for s, sp in zip(samples, splits) if s.label == label]
        share = {sp: mine.count(sp) / len(mine) for sp in ("train", "val", "test")}
        assert 0.55 < share["train"] < 0.85 and share["val"] > 0.05 and share["test"] > 0.05
    assert derived_split("0" * 64) == "test" and derived_split("f" * 64) == "train"
