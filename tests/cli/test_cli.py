"""The command line as users meet it: help, versions, listings, errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys


def test_help_answers_without_importing_torch():
    code = (
        "import sys\n"
        "from transfer_engine.cli.main import main\n"
        "for args in (['--help'], ['backbones', '--help'], ['plugins', '--help'], ['demo', '--help']):\n"
        "    assert main(args) == 0\n"
        "assert 'torch' not in sys.modules, 'help imported torch'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "te backbones" in proc.stdout


def test_version(te):
    from transfer_engine import __version__

    r = te("--version")
    assert r.code == 0 and r.stdout.strip() == f"te {__version__}"


def test_backbones_json_lists_resnet50_with_its_contract_fields(te):
    r = te("backbones", "--json")
    assert r.code == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)["backbones"]}
    resnet50 = rows["resnet50"]
    assert resnet50["feature_dim"] == 2048
    assert resnet50["plugin"] == "transfer-engine"
    assert resnet50["input_size"] == [3, 224, 224]
    assert resnet50["default_weights"] == "IMAGENET1K_V2"
    assert rows["vit_b_16"]["feature_dim"] == 768


def test_backbones_pattern_filters(te):
    r = te("backbones", "resnet*", "--json")
    names = [row["name"] for row in json.loads(r.stdout)["backbones"]]
    assert names and all(n.startswith("resnet") for n in names)


def test_unknown_backbone_is_a_one_line_usage_error_with_close_names(te):
    r = te("backbones", "resnt50")
    assert r.code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("te: error: unknown backbone 'resnt50'") and "resnet50" in lines[0]


def test_heads_json(te):
    r = te("heads", "--json")
    heads = {h["name"]: h for h in json.loads(r.stdout)["heads"]}
    assert {"linear", "mlp", "cosine"} <= set(heads)
    assert heads["mlp"]["options"] == {"hidden": 512, "dropout": 0.2}


def test_broken_and_clashing_plugins_show_in_te_plugins_while_te_keeps_working(te, plugin_env):
    r = te("plugins", "--json", env=plugin_env)
    assert r.code == 0, r.stderr
    plugins = {p["name"]: p for p in json.loads(r.stdout)["plugins"] if p["group"] == "transfer_engine.backbones"}
    broken = plugins["raises_at_import"]
    assert broken["status"] == "broken" and "broken on purpose" in broken["error"]
    assert broken["distribution"] == "te-test-broken" and broken["version"] == "0.0.1"
    assert plugins["clash"]["status"] == "conflict"
    assert plugins["good"]["status"] == "ok" and plugins["good"]["provides"] == ["tiny_cnn"]
    # te backbones still works, lists the good plugin, and marks the clash
    r = te("backbones", "--json", env=plugin_env)
    assert r.code == 0
    rows = json.loads(r.stdout)["backbones"]
    assert any(row["name"] == "tiny_cnn" and row["plugin"] == "te-test-good" for row in rows)
    clash = [row for row in rows if row["name"] == "resnet50"]
    assert {row["plugin"] for row in clash} == {"transfer-engine", "te-test-clash"}
    assert all(row["status"] == "conflict" for row in clash)
    assert "raises_at_import" in r.stderr  # the user is told, on stderr


def test_using_a_clashing_name_is_a_clear_error_naming_both(te, plugin_env):
    r = te("backbones", "resnet50", env=plugin_env)
    assert r.code == 1
    assert "te-test-clash 2.0.0" in r.stderr and "transfer-engine" in r.stderr and "Traceback" not in r.stderr


def test_usage_errors_exit_2(te):
    assert te("no-such-command").code == 2
    assert te("backbones", "--no-such-option").code == 2


def test_traceback_only_with_te_debug(te):
    r = te("backbones", "resnt50", env={"TE_DEBUG": "1"})
    assert r.code != 0 and "Traceback" in r.stderr


def test_json_output_is_only_json(te):
    r = te("info", "--json")
    assert r.code == 0
    report = json.loads(r.stdout)  # would fail on any stray line
    assert report["extension"]["available"] is True
    assert report["torch"]
