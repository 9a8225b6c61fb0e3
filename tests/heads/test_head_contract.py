"""Every built-in head exports to ONNX (onnxruntime agrees at another batch size) and round-trips
through safetensors; HeadSpec's optional fitting fields are checked when a plugin declares them."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

from transfer_engine.heads import HeadSpec, create_head, get_head_spec

BUILTIN = ["linear", "mlp", "cosine", "knn"]


def _ready(name: str, dim: int = 16, classes: int = 5):
    torch.manual_seed(0)
    head = create_head(name, dim, classes).eval()
    spec = get_head_spec(name)
    if spec.fit is not None:
        spec.fit(head, torch.randn(40, dim), torch.arange(40) % classes)
    return head


@pytest.mark.parametrize("name", BUILTIN)
def test_head_exports_to_onnx_with_a_free_batch_axis(name):
    import onnxruntime as ort

    head = _ready(name)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(head, (torch.randn(2, 16),), buffer, dynamo=False, opset_version=18,
                          input_names=["features"], output_names=["logits"],
                          dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(7, 16)
    got = session.run(None, {"features": x.numpy()})[0]
    with torch.no_grad():
        want = head(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert (got.argmax(1) == want.argmax(1)).all()


@pytest.mark.parametrize("name", BUILTIN)
def test_head_round_trips_through_safetensors(tmp_path, name):
    from safetensors.torch import load_file, save_file

    head = _ready(name)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "head.safetensors"))
    fresh = create_head(name, 16, 5).eval()
    fresh.load_state_dict(load_file(str(tmp_path / "head.safetensors")))
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), head(x))


def test_builtin_heads_declare_how_they_are_fitted():
    assert get_head_spec("linear").solver == "lbfgs"
    assert get_head_spec("mlp").solver == "adamw"
    knn = get_head_spec("knn")
    assert not knn.trainable and knn.fit is not None and 20 in knn.search["k"]


def test_head_spec_rejects_inconsistent_fitting_fields():
    build = torch.nn.Linear
    with pytest.raises(ValueError, match="solver must be one of"):
        HeadSpec("h", build, solver="sgd")
    with pytest.raises(ValueError, match="search names option"):
        HeadSpec("h", build, options={"k": 1}, search={"depth": (1, 2)})
    with pytest.raises(ValueError, match="train_defaults has unknown"):
        HeadSpec("h", build, train_defaults={"momentum": 0.9})
    plain = HeadSpec("h", build)  # what a plugin written before these fields declares still works
    assert plain.fit is None and plain.solver == "adamw" and plain.search == {} and plain.train_defaults == {}


# -- input_scale: whether te may train the head on features / s ------------------------------------------------
def test_input_scale_is_declared_in_the_spec_and_checked():
    with pytest.raises(ValueError, match="input_scale must be one of"):
        HeadSpec("h", lambda d, c: torch.nn.Linear(d, c), input_scale="scaled")
    assert get_head_spec("cosine").input_scale == get_head_spec("knn").input_scale == "invariant"


def _check_input_scale(spec: HeadSpec):
    from transfer_engine.plugins_check.heads import check_head
    from transfer_engine.plugins_check.results import CheckReport, Recorder

    report = CheckReport(target="t")
    check_head(spec, Recorder(report, "t"), onnx=False)
    return {r.check: r for r in report.results}["input_scale"]


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_head_is_what_its_input_scale_says(name):
    assert _check_input_scale(get_head_spec(name)).status == "pass"


def test_a_head_wrongly_declared_invariant_fails_te_plugins_check():
    """A linear head changes with the features' scale: trained on features / s as 'invariant', te would
    save a head that is wrong on raw features. The check catches the false declaration."""
    lying = HeadSpec("lying", lambda d, c: torch.nn.Linear(d, c), input_scale="invariant")
    result = _check_input_scale(lying)
    assert result.status == "fail" and "change the logits" in result.detail
    folding_mlp = HeadSpec("fold_mlp", lambda d, c: torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(d, c)),
                           input_scale="fold")
    assert _check_input_scale(folding_mlp).status == "fail"
    assert _check_input_scale(HeadSpec("auto_mlp", folding_mlp.build)).detail.startswith("auto -> raw")


def test_auto_resolves_on_the_built_head_and_a_declaration_wins():
    from transfer_engine.heads.spec import input_scale_of

    linear, mlp = torch.nn.Linear(4, 2), torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert input_scale_of(HeadSpec("a", lambda d, c: linear), linear) == "fold"
    assert input_scale_of(HeadSpec("m", lambda d, c: mlp), mlp) == "raw"
    assert input_scale_of(HeadSpec("r", lambda d, c: linear, input_scale="raw"), linear) == "raw"
