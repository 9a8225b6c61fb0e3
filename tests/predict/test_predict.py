"""`te predict` serving exported models through onnxruntime: preprocessing from the metadata or in the
graph, class names from the metadata, CSV/JSONL output, bad files reported and skipped, clear errors for
files that are not te models."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.cli.main import main
from transfer_engine.errors import UsageError
from transfer_engine.export.images import held_out_images
from transfer_engine.onnx.runtime import CUDA, import_ort
from transfer_engine.predict import predict
from transfer_engine.runs import Run

from ..export.helpers import CHECK_SIZE


def _photos(folder, bad: bool = True):
    """Real photos of three sizes (JPEG and PNG), plus a truncated JPEG and a text file named .png."""
    skimage_data = pytest.importorskip("skimage.data")
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(skimage_data.chelsea()).save(folder / "chelsea.jpg", quality=92)
    Image.fromarray(skimage_data.coffee()[:200, :300]).save(folder / "coffee.png")
    Image.fromarray(skimage_data.astronaut()).resize((97, 131)).save(folder / "astronaut.jpg")
    if bad:
        (folder / "truncated.jpg").write_bytes((folder / "chelsea.jpg").read_bytes()[:600])
        (folder / "notes.png").write_text("not an image")
    return folder


def _torch_top1(run_dir, images) -> list[str]:
    run = Run.open(run_dir)
    transform = run.preprocess.transform()
    with torch.inference_mode():
        logits = run.build_model()(torch.stack([transform(im.convert("RGB")) for im in images]))
    return [run.class_names[i] for i in logits.argmax(1).tolist()]


def test_in_graph_preprocessing_model_classifies_photos_and_skips_bad_files(lite, tmp_path):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "predictions.csv"
    summary = predict(lite / "out" / "lite.fp32.onnx", str(photos), out=out, top_k=3, batch_size=2)
    assert summary.images == 5 and summary.predicted == 3 and summary.provider == "CPUExecutionProvider"
    assert sorted(f["path"] for f in summary.failed) == ["notes.png", "truncated.jpg"]
    assert all(f["reason"] for f in summary.failed)
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "prediction", "probability", "top2", "top2_probability", "top3",
                             "top3_probability", "label"]
    assert [r["path"] for r in rows] == ["astronaut.jpg", "chelsea.jpg", "coffee.png"]
    assert all(r["prediction"] in [str(i) for i in range(10)] for r in rows)
    assert all(float(r["probability"]) >= float(r["top2_probability"]) >= float(r["top3_probability"]) for r in rows)
    # the graph's own preprocessing gives PyTorch's answers on the same raw photos
    images = [Image.open(photos / r["path"]) for r in rows]
    assert [r["prediction"] for r in rows] == _torch_top1(lite / "run", images)


def test_int8_model_serves_what_te_export_checked_on_its_held_out_digits(lite, tmp_path):
    # te predict on te export's own check digits gives the agreement with PyTorch and the accuracy its parity
    # report states, to the digit: what was checked (and met the export's gate) is what is served
    check = held_out_images(Run.open(lite / "run"), None, CHECK_SIZE)
    images, labels, failed = check.load()
    assert failed == [] and len(images) == CHECK_SIZE
    classes = Run.open(lite / "run").class_names
    for i, (image, label) in enumerate(zip(images, labels)):
        (tmp_path / "digits" / classes[label]).mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / "digits" / classes[label] / f"{i:04d}.png")
    summary = predict(lite / "out" / "lite.onnx", str(tmp_path / "digits"), batch_size=8)
    assert summary.variant == "int8" and summary.predicted == summary.labelled == CHECK_SIZE and summary.failed == []
    assert summary.warnings == []  # checked on this very CPU
    expected = _torch_top1(lite / "run", [Image.open(tmp_path / "digits" / r["path"]) for r in summary.predictions])
    agreement = np.mean([r["prediction"] == e for r, e in zip(summary.predictions, expected)])
    report = json.loads((lite / "out" / "lite.parity.json").read_text())
    measured = report["variants"]["int8"]
    assert agreement == pytest.approx(measured["top1_agreement"]) == pytest.approx(measured["unbiased"]["agreement"])
    assert summary.accuracy == pytest.approx(measured["accuracy"])
    assert all(r["label"] == r["path"].split("/")[0] for r in summary.predictions)


def test_metadata_preprocessing_model_writes_jsonl_matching_pytorch(mobilenet, tmp_path):
    photos = _photos(tmp_path / "photos", bad=False)
    out = tmp_path / "p.jsonl"
    summary = predict(mobilenet / "out" / "mnv3.onnx", str(photos / "chelsea.jpg"), out=out, top_k=2)
    assert summary.predicted == 1 and summary.out == str(out) and summary.predictions == []
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["path"] == "chelsea.jpg" and len(row["top_k"]) == 2 and row["label"] is None
    assert row["prediction"] == row["top_k"][0]["class"] == _torch_top1(mobilenet / "run", [Image.open(photos / "chelsea.jpg")])[0]


def test_cli_json_says_the_provider_once(te, lite, tmp_path):
    photos = _photos(tmp_path / "photos")
    r = te("predict", str(lite / "out" / "lite.onnx"), "--data", str(photos), "--top-k", "2", "--json")
    assert r.code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["predicted"] == 3 and len(summary["failed"]) == 2 and summary["top_k"] == 2
    assert len(summary["predictions"]) == 3 and summary["variant"] == "int8"
    assert sum("onnxruntime on CPUExecutionProvider" in line for line in r.stderr.splitlines()) == 1
    assert "2 file(s) skipped" in r.stderr


def _te(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("te: error: "), err
    return code, err[0]


def test_a_file_that_is_not_onnx_is_a_usage_error(capsys, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"\x00\x01 this is not a model" * 10)
    code, line = _te(capsys, "predict", str(tmp_path / "model.onnx"), "--data", "builtin:digits")
    assert code == 2 and "is not an ONNX model" in line
    code, line = _te(capsys, "predict", str(tmp_path / "missing.onnx"), "--data", "builtin:digits")
    assert code == 2 and "does not exist" in line


def test_an_onnx_model_without_te_metadata_is_refused(capsys, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.nn.Linear(4, 2), (torch.zeros(1, 4),), str(tmp_path / "plain.onnx"), dynamo=False)
    code, line = _te(capsys, "predict", str(tmp_path / "plain.onnx"), "--data", "builtin:digits")
    assert code == 2 and "without te metadata" in line and "te export" in line


def test_parts_of_a_split_are_not_whole_models(capsys, lite):
    code, line = _te(capsys, "predict", str(lite / "out" / "lite.head.onnx"), "--data", "builtin:digits")
    assert code == 2 and "head part" in line


def test_bad_options_are_usage_errors(capsys, mobilenet, tmp_path):
    model = str(mobilenet / "out" / "mnv3.onnx")
    code, line = _te(capsys, "predict", model, "--data", "builtin:digits", "--out", str(tmp_path / "p.txt"))
    assert code == 2 and ".csv or .jsonl" in line
    code, line = _te(capsys, "predict", model, "--data", "builtin:digits", "--top-k", "11")
    assert code == 2 and "--top-k 11" in line
    code, line = _te(capsys, "predict", model, "--data", str(tmp_path / "nowhere"))
    assert code == 2 and "nowhere" in line


def test_cuda_provider_without_onnxruntime_gpu_is_a_usage_error(capsys, mobilenet):
    if CUDA in import_ort().get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    code, line = _te(capsys, "predict", str(mobilenet / "out" / "mnv3.onnx"), "--data", "builtin:digits",
                     "--provider", "cuda")
    assert code == 2 and "onnxruntime-gpu" in line
    with pytest.raises(UsageError, match="--provider cuda"):
        predict(mobilenet / "out" / "mnv3.onnx", "builtin:digits", provider="cuda")


@pytest.mark.cuda
def test_cuda_provider_runs_the_model_when_present(mobilenet, tmp_path):
    if CUDA not in import_ort().get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    summary = predict(mobilenet / "out" / "mnv3.onnx", str(_photos(tmp_path / "photos")), provider="cuda")
    assert summary.provider == CUDA and summary.predicted == 3
