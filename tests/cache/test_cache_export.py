"""`te cache export`: a data set's cached features read back by numpy, pyarrow and FAISS as te itself reads them.

The cache is tests/train/conftest.py's `fill_cache`: the real efficientnet_lite0 features of 900 builtin:digits
images, int8 as te extract stores them, keyed and split as te extract keys and splits them.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from transfer_engine.cache import FeatureCache
from transfer_engine.cache.export import export_features
from transfer_engine.cli.main import main
from transfer_engine.errors import UsageError

_spec = importlib.util.spec_from_file_location("te_train_fixtures", Path(__file__).parents[1] / "train" / "conftest.py")
train_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_fixtures)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """(cache dir, records, class names, float32 features as te's loader gives them, in record order)."""
    root = tmp_path_factory.mktemp("export-cache") / "cache"
    records, classes = train_fixtures.digit_records()
    features = torch.from_numpy(np.load(train_fixtures.FIXTURE)["features"])
    train_fixtures.fill_cache(root, features, records=records, class_names=classes)
    with FeatureCache.open(root, create=False) as cache:
        space = cache.space(cache.spaces()[0])
        loaded = torch.cat([b.features for b in space.batches(dataset="digits", shuffle=False, batch_size=256)])
    return root, records, classes, loaded.numpy()


def _npy(out: Path, role: str = "embeddings") -> np.ndarray:
    summary = json.loads((out / "export.json").read_text())
    return np.concatenate([np.load(out / name) for name in summary["files"][role]])


def _metadata(out: Path) -> dict:
    summary = json.loads((out / "export.json").read_text())
    role = "metadata" if summary["format"] == "npy" else "embeddings"
    return pq.ParquetDataset([str(out / name) for name in summary["files"][role]]).read().to_pydict()


def _parquet_embeddings(out: Path, column: str = "embedding") -> np.ndarray:
    summary = json.loads((out / "export.json").read_text())
    table = pq.ParquetDataset([str(out / name) for name in summary["files"]["embeddings"]]).read()
    values = table[column].combine_chunks()
    return values.flatten().to_numpy().reshape(len(table), -1) if column == "embedding" else values.to_numpy()


def _assert_metadata(meta: dict, records, classes) -> None:
    assert meta["key"] == [r.key for r in records]
    assert meta["path"] == [r.path for r in records]
    assert meta["label"] == [r.label for r in records]
    assert meta["class"] == [classes[r.label] for r in records]
    assert meta["split"] == [r.split for r in records]


def test_npy_export_is_the_loaders_features_with_matching_metadata(digits, tmp_path):
    root, records, classes, loaded = digits
    summary = export_features(root, format="npy", out=tmp_path / "all")
    emb = np.load(tmp_path / "all" / "emb" / "embeddings_00000.npy")
    assert emb.dtype == np.float32 and emb.shape == (900, 1280)
    assert np.array_equal(emb, loaded)  # te's own dequantization, bit for bit
    _assert_metadata(_metadata(tmp_path / "all"), records, classes)
    written = json.loads((tmp_path / "all" / "export.json").read_text())
    assert written == json.loads(json.dumps(summary.to_dict()))
    assert (written["rows"], written["dim"], written["dtype"], written["normalized"]) == (900, 1280, "float32", False)
    assert written["backbone"] == "efficientnet_lite0" and written["stored"] == "int8"
    assert not list((tmp_path / "all").rglob(".*"))  # no temporary file left

    test = [i for i, r in enumerate(records) if r.split == "test"]
    export_features(root, format="npy", split="test", out=tmp_path / "test")
    assert np.array_equal(_npy(tmp_path / "test"), loaded[test])
    _assert_metadata(_metadata(tmp_path / "test"), [records[i] for i in test], classes)


def test_parquet_export_holds_the_same_rows_and_columns(digits, tmp_path):
    root, records, classes, loaded = digits
    export_features(root, format="parquet", out=tmp_path / "pq")
    assert [p.name for p in (tmp_path / "pq").iterdir() if p.suffix == ".parquet"] == ["embeddings_00000.parquet"]
    kind = pq.read_schema(tmp_path / "pq" / "embeddings_00000.parquet").field("embedding").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 1280 and kind.value_type == pa.float32()
    assert np.array_equal(_parquet_embeddings(tmp_path / "pq"), loaded)
    _assert_metadata(_metadata(tmp_path / "pq"), records, classes)


def test_int8_codes_and_scales_give_back_the_float32_rows(digits, tmp_path):
    root, _, _, loaded = digits
    export_features(root, format="npy", dtype="int8", out=tmp_path / "npy8")
    codes, scales = _npy(tmp_path / "npy8"), _npy(tmp_path / "npy8", "scales")
    assert codes.dtype == np.int8 and scales.dtype == np.float32 and scales.shape == (900,)
    assert np.array_equal(codes.astype(np.float32) * scales[:, None], loaded)

    export_features(root, format="parquet", dtype="int8", out=tmp_path / "pq8")
    codes, scales = _parquet_embeddings(tmp_path / "pq8"), _parquet_embeddings(tmp_path / "pq8", "scale")
    assert codes.dtype == np.int8 and np.array_equal(codes.astype(np.float32) * scales[:, None], loaded)


def test_small_files_and_chunks_concatenate_to_the_same_export(digits, tmp_path):
    root, records, classes, loaded = digits
    for fmt in ("npy", "parquet"):
        summary = export_features(root, format=fmt, out=tmp_path / fmt, rows_per_file=250, chunk_rows=64,
                                  normalize=True)
        tables = summary.files["metadata" if fmt == "npy" else "embeddings"]
        assert [pq.read_metadata(tmp_path / fmt / name).num_rows for name in tables] == [250, 250, 250, 150]
        if fmt == "npy":
            assert [len(np.load(tmp_path / fmt / name)) for name in summary.files["embeddings"]] == [250, 250, 250, 150]
        got = _npy(tmp_path / fmt) if fmt == "npy" else _parquet_embeddings(tmp_path / fmt)
        assert np.allclose(got, loaded / np.linalg.norm(loaded, axis=1, keepdims=True), rtol=1e-6, atol=1e-7)
        _assert_metadata(_metadata(tmp_path / fmt), records, classes)


@pytest.mark.parametrize("flat_rows, kind", [(100_000, "IndexFlatIP"), (100, "IndexIVFFlat")])
def test_the_faiss_index_finds_each_row_first(digits, tmp_path, flat_rows, kind):
    faiss = pytest.importorskip("faiss")
    root, _, _, loaded = digits
    summary = export_features(root, format="npy", out=tmp_path / "ix", faiss=True, faiss_flat_rows=flat_rows,
                              chunk_rows=200)
    index = faiss.read_index(str(tmp_path / "ix" / "index.faiss"))
    assert type(index).__name__ == kind == summary.faiss["type"] and index.ntotal == 900
    queries = _npy(tmp_path / "ix") / np.linalg.norm(loaded, axis=1, keepdims=True)
    scores, found = index.search(queries.astype(np.float32), 1)
    # the row itself, or a record of the very same image (equal features): cosine 1 either way
    assert np.array_equal(loaded[found[:, 0]], loaded) and np.allclose(scores[:, 0], 1, atol=1e-5)


def _te(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["cache", "export", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_mistakes_are_one_line_errors(digits, tmp_path, capsys):
    root = digits[0]
    out = tmp_path / "out"
    cases = [
        (["--dataset", "flowers"], "has no data set 'flowers'; it has: digits"),
        (["--split", "holdout"], "has no records in split 'holdout' (it has: test (", ),
        (["--backbone", "resnet50"], "no features of backbone 'resnet50'"),
        ([tmp_path / "nowhere", "--format", "npy"], "does not exist"),
    ]
    for args, message in cases:
        given = args if args and isinstance(args[0], Path) else [root, "--format", "npy", *args]
        code, _, err = _te(capsys, *given, "--out", out)
        assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
        assert not out.exists()  # nothing written before the input was known to be right

    assert _te(capsys, root, "--format", "npy", "--split", "test", "--out", out, "--json")[0] == 0
    code, _, err = _te(capsys, root, "--format", "parquet", "--out", out)
    assert code == 2 and "already holds an export; pass --overwrite" in err and err.count("\n") == 1
    code, stdout, _ = _te(capsys, root, "--format", "parquet", "--out", out, "--overwrite", "--json")
    assert code == 0 and json.loads(stdout)["format"] == "parquet"
    assert sorted(p.name for p in out.iterdir()) == ["embeddings_00000.parquet", "export.json"]  # npy files gone

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code, _, err = _te(capsys, root, "--format", "npy", "--out", tmp_path / "mine", "--overwrite")
    assert code == 2 and "does not write (notes.txt)" in err and (tmp_path / "mine" / "notes.txt").is_file()

    (tmp_path / "file").write_text("")
    code, _, err = _te(capsys, root, "--format", "npy", "--out", tmp_path / "file" / "sub")
    assert code == 2 and "file is a file, not a folder" in err and err.count("\n") == 1


def test_several_spaces_need_a_choice_and_int8_needs_an_int8_space(digits, tmp_path, capsys):
    root, records, classes, loaded = digits
    two = tmp_path / "two"
    shutil.copytree(root, two)
    fp32 = train_fixtures.fill_cache(two, torch.from_numpy(loaded), stored="fp32", records=records,
                                     class_names=classes)
    code, _, err = _te(capsys, two, "--format", "npy", "--out", tmp_path / "out")
    assert code == 2 and "2 feature spaces hold data set 'digits'" in err and "--space ID or --backbone" in err
    assert fp32[:12] in err and err.count("\n") == 1

    with pytest.raises(UsageError, match="--dtype int8 writes the stored int8 codes.*stores fp32"):
        export_features(two, format="npy", dtype="int8", space=fp32[:12], out=tmp_path / "out")
    export_features(two, format="npy", space=fp32[:12], out=tmp_path / "out")
    assert np.array_equal(_npy(tmp_path / "out"), loaded)
