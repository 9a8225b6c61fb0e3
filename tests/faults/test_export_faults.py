"""#35 item 12: `te export` of a run whose head weights are NaN ended in `internal error: ValueError: Out of
range float values are not JSON compliant` (the parity report); and a run's head.safetensors was 0600
(safetensors' own temporary file) while its other files were 0644."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from transfer_engine.backbones import create_backbone
from transfer_engine.cli.main import main
from transfer_engine.heads import create_head
from transfer_engine.runs import HEAD_WEIGHTS, RUN_JSON, RunWriter

from ..export.helpers import write_run


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("mobilenet_v3_small", weights="none", seed=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_export_of_a_run_with_non_finite_head_weights_is_one_line_before_any_file(tmp_path, capsys, backbone, bad):
    torch.manual_seed(0)
    head = create_head("linear", backbone.feature_dim, 10).eval()
    with torch.no_grad():
        next(head.parameters())[0, 0] = bad
    run = write_run(tmp_path / "run", backbone, head, None)
    out = tmp_path / "out"
    out.mkdir()
    code = main(["export", str(run), "--onnx", "--out", str(out / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("te: error: the run's head has non-finite weights (NaN/inf"), err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_a_runs_weights_have_the_mode_of_its_other_files(tmp_path, umask):
    old = os.umask(umask)
    try:
        with RunWriter(tmp_path / "run") as w:
            w.save_tensors(HEAD_WEIGHTS, {"weight": torch.zeros(2, 3)})
            w.write_json(RUN_JSON, {"kind": "test"})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "run").iterdir()}
    assert modes == {HEAD_WEIGHTS: 0o666 & ~umask, RUN_JSON: 0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
