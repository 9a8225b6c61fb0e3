"""Plugin discovery through entry points, with real installed test distributions (tests/plugins)."""

from __future__ import annotations

import pytest

from transfer_engine.backbones import BackboneSpec
from transfer_engine.backbones import GROUP as BACKBONES
from transfer_engine.errors import DuplicateNameError, UnknownNameError
from transfer_engine.heads import GROUP as HEADS
from transfer_engine.heads import HeadSpec
from transfer_engine.registry import Registry


@pytest.fixture
def on_path(monkeypatch, plugin_site):
    monkeypatch.syspath_prepend(str(plugin_site))  # also invalidates import caches
    monkeypatch.delenv("TE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TE_PLUGINS", raising=False)


def fresh(group=BACKBONES, kind="backbone", spec=BackboneSpec) -> Registry:
    return Registry(group, kind, spec)


def records(reg: Registry) -> dict[str, object]:
    return {r.name: r for r in reg.plugins()}


def test_builtins_come_through_the_entry_point_group_with_distribution_and_version():
    reg = fresh()
    rec = records(reg)["torchvision"]
    assert rec.distribution == "transfer-engine"
    assert rec.version and rec.status == "ok"
    assert "resnet50" in rec.provides
    spec, owner = reg.lookup("resnet50")
    assert spec.feature_dim == 2048 and owner is rec


def test_third_party_plugin_is_discovered_with_its_distribution(on_path):
    reg = fresh()
    spec, rec = reg.lookup("tiny_cnn")
    assert (rec.distribution, rec.version, rec.status) == ("te-test-good", "1.2.3", "ok")
    assert spec.feature_dim == 8
    heads = fresh(HEADS, "head", HeadSpec)
    assert heads.lookup("centroid_probe")[1].distribution == "te-test-good"


def test_discovery_is_sorted_and_lazy(on_path):
    import sys

    sys.modules.pop("te_test_good", None)
    reg = fresh()
    assert "te_test_good" not in sys.modules  # nothing imported until asked
    names = [r.name for r in reg.plugins()]
    assert names == sorted(names)
    assert reg.names() == sorted(reg.names())
    assert "te_test_good" in sys.modules


def test_broken_plugins_are_recorded_not_fatal(on_path, capsys):
    reg = fresh()
    rec = records(reg)
    assert rec["raises_at_import"].status == "broken"
    assert "RuntimeError: this plugin is broken on purpose" in rec["raises_at_import"].error
    assert rec["wrong_type"].status == "broken" and "BackboneSpec" in rec["wrong_type"].error
    assert rec["missing_module"].status == "broken" and "ModuleNotFoundError" in rec["missing_module"].error
    assert all(r.distribution == "te-test-broken" for k, r in rec.items() if k in {"raises_at_import", "wrong_type"})
    # everything else still works, and the user was told once on stderr
    assert reg.get("resnet18").feature_dim == 512
    err = capsys.readouterr().err
    assert "raises_at_import" in err and "te plugins" in err


def test_name_clash_is_an_error_naming_both_distributions(on_path):
    reg = fresh()
    with pytest.raises(DuplicateNameError) as exc:
        reg.get("resnet50")
    message = str(exc.value)
    assert "te-test-clash 2.0.0" in message and "transfer-engine" in message
    rec = records(reg)
    assert rec["clash"].status == "conflict" and "transfer-engine" in rec["clash"].error
    assert rec["torchvision"].status == "conflict" and "te-test-clash" in rec["torchvision"].error
    assert reg.get("resnet34").feature_dim == 512  # the rest of the plugin is unaffected


def test_autoload_can_be_disabled_and_single_plugins_forced(on_path, monkeypatch):
    monkeypatch.setenv("TE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reg = fresh()
    assert "tiny_cnn" not in reg
    assert records(reg)["good"].status == "disabled"
    assert reg.get("resnet50").feature_dim == 2048  # te's own plugins still load (and no clash now)
    monkeypatch.setenv("TE_PLUGINS", "good")
    assert "tiny_cnn" in fresh()


def test_unknown_name_lists_close_names():
    with pytest.raises(UnknownNameError) as exc:
        fresh().get("resnet5")
    message = str(exc.value)
    assert "unknown backbone 'resnet5'" in message and "resnet50" in message and "te backbones" in message


def test_in_process_registration_behaves_like_a_plugin():
    reg = fresh()
    spec = BackboneSpec(name="notebook_net", feature_dim=4, build=lambda w: None)
    reg.register(spec)
    assert reg.get("notebook_net") is spec
    reg.unregister("notebook_net")
    assert "notebook_net" not in reg


def test_spec_validation_rejects_contract_breaches():
    with pytest.raises(ValueError, match="feature_dim"):
        BackboneSpec(name="x", feature_dim=0, build=lambda w: None)
    with pytest.raises(ValueError, match="default_weights"):
        BackboneSpec(name="x", feature_dim=3, build=lambda w: None, weights=("a",), default_weights="b")
    with pytest.raises(ValueError, match="without spaces"):
        HeadSpec(name="two words", build=lambda i, o: None)
