"""`te plugins check`: passes a conforming plugin, and fails, saying why and what to change, for a plugin
that raises at import, declares a wrong feature size, keeps head state outside its state dict, or
clashes with a built-in name. Real installed test distributions (tests/plugins), no mocks."""

from __future__ import annotations

import json

import pytest

from transfer_engine.errors import UsageError
from transfer_engine.plugins_check import check_plugin
from transfer_engine.plugins_check.backbones import choose, meta_parameters


def by_check(report) -> dict[tuple[str, str, str], object]:
    return {(r.entry_point, r.name, r.check): r for r in report.results}


def test_a_conforming_plugin_passes_every_check(test_plugins_importable):
    report = check_plugin("te-test-good", remember=False)
    assert report.passed, [r.to_dict() for r in report.failures]
    checks = by_check(report)
    for check in ("load", "names"):
        assert checks[("backbones:good", "", check)].status == "pass"
    for check in ("preprocess", "build", "forward", "onnx"):
        assert checks[("backbones:good", "tiny_cnn", check)].status == "pass", check
    assert "[2x3x32x32] -> [2, 8]" in checks[("backbones:good", "tiny_cnn", "forward")].detail
    for check in ("build", "forward", "safetensors", "onnx"):
        assert checks[("heads:good", "centroid_probe", check)].status == "pass", check
    assert "bias=True" in checks[("heads:good", "centroid_probe", "build")].detail  # built with its declared options


def test_cli_explains_a_wrong_feature_dim_and_te_plugins_shows_it(te, all_test_plugins):
    r = te("plugins", "check", "te-test-nonconforming", env=all_test_plugins)
    assert r.code == 1, r.stdout + r.stderr
    lines = {line.split()[1] + " " + line.split()[2]: line for line in r.stdout.splitlines()
             if line.startswith(("backbones:", "heads:"))}
    assert "FAIL" in lines["wrong_dim_cnn forward"]
    assert "declares feature_dim=8 but [2x3x32x32] gives [2, 12]: set feature_dim=12" in lines["wrong_dim_cnn forward"]
    assert "skip" in lines["wrong_dim_cnn onnx"]
    assert "FAIL" in lines["forgetful_head safetensors"] and "outside the state dict" in lines["forgetful_head safetensors"]
    assert "FAILED: " in r.stdout and "Traceback" not in r.stderr

    # te keeps working, and `te plugins` now shows the verdict of that check.
    listed = te("plugins", "--json", env=all_test_plugins)
    assert listed.code == 0, listed.stderr
    rows = {(p["group"], p["name"]): p for p in json.loads(listed.stdout)["plugins"]}
    verdict = rows[("transfer_engine.backbones", "nonconforming")]["check"]
    assert verdict["passed"] is False and "declares feature_dim=8" in verdict["summary"]
    assert rows[("transfer_engine.backbones", "nonconforming")]["status"] == "ok"  # it loads; building shows the fault
    assert rows[("transfer_engine.backbones", "good")]["check"] is None  # never checked


def test_a_plugin_that_raises_at_import_is_explained(test_plugins_importable):
    report = check_plugin("te-test-broken", remember=False)
    assert not report.passed
    load = {r.entry_point: r for r in report.results if r.check == "load"}
    assert set(load) == {"backbones:raises_at_import", "backbones:wrong_type", "backbones:missing_module"}
    assert all(r.status == "fail" for r in load.values())
    raised = load["backbones:raises_at_import"].detail
    assert "RuntimeError: this plugin is broken on purpose at te_test_broken/explodes.py:1" in raised
    assert "while importing 'te_test_broken.explodes'" in raised
    assert "must name a BackboneSpec, a list of them, or a zero-argument callable" in load["backbones:wrong_type"].detail
    assert "installs no such module" in load["backbones:missing_module"].detail


def test_a_name_clash_with_a_builtin_is_explained(test_plugins_importable):
    report = check_plugin("clash", onnx=False, remember=False)  # an entry-point name works as NAME too
    names = by_check(report)[("backbones:clash", "", "names")]
    assert names.status == "fail"
    assert "'resnet50' is also provided by transfer-engine" in names.detail and "rename yours" in names.detail
    # The model itself is fine: only the name is the problem.
    assert by_check(report)[("backbones:clash", "resnet50", "forward")].status == "pass"


def test_unknown_plugin_is_a_usage_error_listing_what_is_installed():
    with pytest.raises(UsageError) as exc:
        check_plugin("te-efficientnet-lyte", remember=False)
    message = str(exc.value)
    assert "te-efficientnet-lite" in message and "transfer-engine" in message and "\n" not in message


def test_a_zoo_is_sampled_evenly_passing_over_big_models():
    from transfer_engine.backbones import registry

    specs = [spec for spec, record in registry.entries() if record.distribution == "transfer-engine"]
    cap = 30_000_000
    chosen, passed_over = choose(specs, limit=3, pattern=None, check_all=False, max_params=cap)
    names = sorted(s.name for s in specs)
    assert len(chosen) == 3
    positions = [names.index(s.name) for s in chosen]
    assert positions == sorted(positions) and positions[-1] - positions[0] >= len(names) // 2  # spread out
    assert all(meta_parameters(s) <= cap for s in chosen)
    assert passed_over and all(p["parameters"] > cap for p in passed_over)
    everything, _ = choose(specs, limit=3, pattern=None, check_all=True, max_params=cap)
    assert len(everything) == len(specs)
    only, _ = choose(specs, limit=3, pattern="resnet1*", check_all=False, max_params=cap)
    assert [s.name for s in only] == ["resnet101", "resnet152", "resnet18"]


def test_tes_own_heads_pass_the_check_including_a_fitted_one():
    from transfer_engine.heads import get_head_spec, list_heads

    report = check_plugin("builtin", remember=False)  # the entry point of te's own heads
    assert report.passed, [f"{r.name} {r.check}: {r.detail}" for r in report.failures]
    checked = {r.name for r in report.results if r.check == "safetensors" and r.status == "pass"}
    assert checked >= {"linear", "mlp", "cosine"}
    fitted = [h for h in list_heads() if getattr(get_head_spec(h), "fit", None) is not None]
    assert {r.name for r in report.results if r.check == "fit" and r.status == "pass"} == set(fitted)
