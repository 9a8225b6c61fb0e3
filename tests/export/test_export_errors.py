"""`te export` as users meet it on the command line, and every way it refuses: a run that is not one, an
opset that cannot be written, check images without labels or with unknown classes, a model whose ONNX
graph really differs from PyTorch (exit 1, nothing written but the failed report), a quantized variant
below --min-agreement."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from transfer_engine.backbones import create_backbone
from transfer_engine.cli.main import main
from transfer_engine.data.sources import open_source
from transfer_engine.export import ParityError, export_onnx
from transfer_engine.heads import create_head
from transfer_engine.runs import Run

from .helpers import mobilenet_run, write_run


def _te(capsys, *args: str) -> tuple[int, str, str]:
    """Run the CLI in this process (exit code, stdout, stderr), as `te ARGS` would."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if not line.startswith("te export: ")]
    assert len(lines) == 1 and lines[0].startswith("te: error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _digit_folder(root, count: int = 12, classes=None) -> str:
    """Real digits as PNG files in CLASS/IMAGE folders (a labelled --check-data / --data folder)."""
    source = open_source("builtin:digits")
    for i, sample in enumerate(list(source.samples())[:count]):
        name = (classes or source.class_names)[sample.label % len(classes or source.class_names)]
        (root / name).mkdir(parents=True, exist_ok=True)
        source.decode(sample, source.read_bytes(sample)).save(root / name / f"{i:03d}.png")
    return str(root)


def test_cli_json_prints_one_report_and_progress_goes_to_stderr(te, mobilenet, tmp_path):
    r = te("export", str(mobilenet / "run"), "--onnx", "--out", str(tmp_path / "m.onnx"), "--check-size", "8",
           "--batch-sizes", "1,3", "--json")
    assert r.code == 0, r.stderr
    report = json.loads(r.stdout)  # the whole of stdout is one JSON object
    fp32 = report["variants"]["fp32"]
    assert {"max_abs_diff", "mean_abs_diff", "cosine", "top1_agreement", "accuracy_delta"} <= set(fp32)
    assert report["passed"] and fp32["top1_agreement"] == 1.0 and set(report["batch_sizes"]) == {"1", "3"}
    assert report["files"] == {"model": str(tmp_path / "m.onnx"), "report": str(tmp_path / "m.parity.json")}
    assert json.loads((tmp_path / "m.parity.json").read_text())["variants"]["fp32"] == fp32
    assert "te export: exporting mobilenet_v3_small" in r.stderr


def test_a_directory_that_is_not_a_run_is_a_usage_error(capsys, tmp_path):
    code, out, err = _te(capsys, "export", str(tmp_path), "--onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and out == ""
    _one_line_error(err, "is not a te run", "run.json")


def test_export_needs_onnx_and_an_onnx_file_name(capsys, mobilenet, tmp_path):
    code, _, err = _te(capsys, "export", str(mobilenet / "run"), "--out", str(tmp_path / "m.onnx"))
    assert code == 2
    _one_line_error(err, "--onnx")
    code, _, err = _te(capsys, "export", str(mobilenet / "run"), "--onnx", "--out", str(tmp_path / "m.pt"))
    assert code == 2
    _one_line_error(err, ".onnx")


@pytest.mark.parametrize("opset, fragment", [(99, "the installed onnx"), (24, "torch"), (5, "writes opsets")])
def test_an_opset_that_cannot_be_written_is_a_usage_error(capsys, mobilenet, tmp_path, opset, fragment):
    code, _, err = _te(capsys, "export", str(mobilenet / "run"), "--onnx", "--out", str(tmp_path / "m.onnx"),
                       "--opset", str(opset))
    assert code == 2
    _one_line_error(err, f"--opset {opset}", fragment)
    assert not list(tmp_path.iterdir())


def test_preprocess_needs_opset_18(capsys, mobilenet, tmp_path):
    code, _, err = _te(capsys, "export", str(mobilenet / "run"), "--onnx", "--out", str(tmp_path / "m.onnx"),
                       "--opset", "17", "--preprocess")
    assert code == 2
    _one_line_error(err, "--preprocess needs --opset 18")


def test_check_data_without_labels_is_refused(capsys, mobilenet, tmp_path):
    flat = tmp_path / "photos"
    flat.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(flat / "red.png")
    code, _, err = _te(capsys, "export", str(mobilenet / "run"), "--onnx", "--out", str(tmp_path / "m.onnx"),
                       "--check-data", str(flat))
    assert code == 2
    _one_line_error(err, "has no labels", "CLASS/IMAGE")


def test_check_data_with_classes_the_run_does_not_know_is_refused(capsys, mobilenet, tmp_path):
    folder = _digit_folder(tmp_path / "pets", 4, classes=["cat", "dog"])
    code, _, err = _te(capsys, "export", str(mobilenet / "run"), "--onnx", "--out", str(tmp_path / "m.onnx"),
                       "--check-data", folder)
    assert code == 2
    _one_line_error(err, "classes the run was not trained on", "cat")


def test_labelled_check_data_folder_is_used_instead_of_the_runs_data(mobilenet, tmp_path):
    folder = _digit_folder(tmp_path / "digits", 12)
    result = export_onnx(mobilenet / "run", tmp_path / "m.onnx", check_data=folder, batch_sizes=(2,))
    assert result.report["check"]["images"] == 12 and folder in result.report["check"]["source"]


def test_a_run_whose_data_is_gone_needs_check_data(capsys, tmp_path):
    gone = tmp_path / "photos-moved-away"
    run = mobilenet_run(tmp_path, cache=None, data=str(gone))
    code, _, err = _te(capsys, "export", str(run), "--onnx", "--out", str(tmp_path / "m.onnx"))
    assert code == 2
    _one_line_error(err, "the run's data is not available", "--check-data")


def test_existing_files_are_kept_unless_overwrite(capsys, mobilenet, tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"someone's model")
    code, _, err = _te(capsys, "export", str(mobilenet / "run"), "--onnx", "--out", str(target))
    assert code == 2 and target.read_bytes() == b"someone's model"
    _one_line_error(err, "already exists", "--overwrite")


class _ShiftWhenNonZero(torch.nn.Module):
    """A backbone with data-dependent Python control flow: tracing records the branch of the example
    input (zeros), so the ONNX graph never shifts while PyTorch does on real images. A real cause of
    "the ONNX model gives different results than the .pth"."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.inner(images)
        if bool(images.abs().sum() > 0):
            return features + 1.0
        return features


class _BranchingRun(Run):
    def build_model(self):
        model = super().build_model()
        model.backbone = _ShiftWhenNonZero(model.backbone)
        return model


def test_fp32_that_differs_from_pytorch_fails_and_writes_only_the_report(mobilenet, tmp_path):
    run = _BranchingRun.open(mobilenet / "run")
    with pytest.raises(ParityError) as caught:
        export_onnx(run, tmp_path / "m.onnx", check_size=8, split=True, batch_sizes=(1,))
    assert caught.value.exit_code == 1
    message = str(caught.value)
    assert message.startswith("fp32: ") and "tolerance" in message and "m.parity-failed.json" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parity-failed.json"]
    report = json.loads((tmp_path / "m.parity-failed.json").read_text())
    fp32 = report["variants"]["fp32"]
    assert not report["passed"] and not fp32["passed"]
    assert fp32["features"]["max_abs_diff"] == pytest.approx(1.0, abs=1e-3)  # where: the features, by 1.0
    assert fp32["providers"]["CPUExecutionProvider"]["max_abs_diff"] > report["tolerance"]["logits"]


def test_quantized_variant_below_min_agreement_is_refused(tmp_path):
    # A head whose two best classes are 1e-5 apart on every image: fp32 keeps the order up to float
    # noise (such near-ties are excepted), fp16 cannot tell them apart and flips about half of them.
    backbone = create_backbone("resnet18", weights="none", seed=0)
    head = create_head("linear", backbone.feature_dim, 10)
    with torch.no_grad():
        torch.manual_seed(0)
        for p in head.parameters():
            p.zero_()
        weight = next(p for p in head.parameters() if p.ndim == 2)
        bias = next(p for p in head.parameters() if p.ndim == 1)
        weight[0] = torch.rand(backbone.feature_dim)
        weight[1] = weight[0] * (1 + 1e-5 * torch.randn(backbone.feature_dim))
        bias[2:] = -100.0
    run = write_run(tmp_path / "run", backbone, head.eval(), cache=None)
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    with pytest.raises(ParityError, match=r"fp16: top-1 agreement with PyTorch .* < --min-agreement 99\.0%"):
        export_onnx(run, tmp_path / "out" / "m.onnx", quantize="fp16", check_size=12, batch_sizes=(1,))
    report = json.loads((tmp_path / "out" / "m.parity-failed.json").read_text())
    assert report["variants"]["fp32"]["passed"] and not report["variants"]["fp16"]["passed"]
    assert report["variants"]["fp16"]["top1_agreement"] < 0.99
    assert np.isfinite(report["variants"]["fp16"]["max_abs_diff"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.parity-failed.json"]
