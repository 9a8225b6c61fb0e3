"""#18: `te compare` as users run it: a leaderboard over several backbones from one shared cache, a
backbone that fails to build reported in its row while the others are ranked, a re-run with one more
backbone that extracts and fits only that one, and an unknown name refused before any work."""

from __future__ import annotations

import json

import pytest

from transfer_engine.compare.ranking import kendall_tau, pareto_front

ARGS = ["--data", "builtin:digits", "--weights", "none", "--limit", "60", "--backend", "torch"]


def _first_run(te, tmp_path, faulty_env):
    cache, out = str(tmp_path / "cache"), str(tmp_path / "out")
    r = te("compare", *ARGS, "--cache", cache, "--out", out, "--backbones", "tiny_cnn,faulty_raises", "--int8",
           env=faulty_env)
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[:5] == ["rank", "backbone", "LogME", "linear", "5-fold"]  # 51 train+val images: k-fold
    assert lines[1].split()[:2] == ["1", "tiny_cnn"]
    assert "faulty_raises" in lines[2] and "failed" in lines[2] and "te-test-faulty" in lines[2]
    assert lines[0].endswith("int8 img/s@32  int8 cos")  # the int8 columns
    assert lines[3].startswith("recommendation: tiny_cnn: the most accurate linear probe by 5-fold cross-validation")
    assert lines[4].startswith("note: int8: every node in int8 (portable recipe")
    board = json.loads((tmp_path / "out" / "compare.json").read_text())
    first = board["entries"][0]
    assert first["backbone"] == "tiny_cnn" and first["extracted"] == 60 and first["reused"] == 0
    assert 0 < first["linear_val"] <= 1 and 0 < first["knn_val"] <= 1 and first["logme"] is not None
    kfold = first["linear_kfold"]  # what ranked it, with its interval, in --json and compare.json alike
    assert kfold["k"] == 5 and kfold["interval"][0] <= kfold["accuracy"] <= kfold["interval"][1]
    assert board["selected_by"] == "kfold" and board["recommended"] == board["best"] == "tiny_cnn"
    assert first["latency_ms_batch1"] > 0 and first["parameters"] > 0 and first["feature_dim"] > 0
    # onnxruntime fp32 runs the backbone's ONNX graph, a cache artifact of the size a user would ship
    assert first["ort_latency_ms_batch1"] > 0 and first["ort_images_per_second_batch32"] > 0
    artifacts = list((tmp_path / "cache" / "artifacts").iterdir())
    assert [p.stat().st_size for p in artifacts] == [first["onnx_bytes"]]
    int8 = first["int8"]
    assert int8["recipe"] == "portable" and int8["calibration_images"] > 0 and int8["check_split"] == "val"
    assert 0.9 < int8["min_cosine"] <= int8["mean_cosine"] <= 1 + 1e-9 and int8["images_per_second_batch32"] > 0
    assert int8["bytes"] > 0  # (smaller than fp32 for real backbones; Q/DQ nodes outweigh tiny_cnn's weights)
    assert (tmp_path / "out" / "compare.png").stat().st_size > 1000
    assert "Recommendation: tiny_cnn" in (tmp_path / "out" / "compare.md").read_text()
    return cache, out, first


def test_a_leaderboard_ranks_what_builds_and_names_in_its_row_what_does_not(te, tmp_path, faulty_env):
    _first_run(te, tmp_path, faulty_env)


@pytest.mark.slow
def test_a_rerun_with_one_more_backbone_extracts_and_fits_only_that_one(te, tmp_path, faulty_env):
    cache, out, first = _first_run(te, tmp_path, faulty_env)
    again = te("compare", *ARGS, "--cache", cache, "--out", out, "--backbones", "tiny_cnn,mobilenet_v3_small",
               env=faulty_env)
    assert again.code == 0, again.stderr
    said = again.stderr.replace("\r", "\n")
    assert "compare: tiny_cnn: 0 extracted, 60 reused" in said and "(probes reused)" in said
    assert "compare: mobilenet_v3_small: 60 extracted, 0 reused" in said
    board = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert {e["backbone"] for e in board["entries"]} == {"tiny_cnn", "mobilenet_v3_small"}
    reused = next(e for e in board["entries"] if e["backbone"] == "tiny_cnn")
    assert reused["probes_reused"] and reused["linear_val"] == first["linear_val"]


def test_an_unknown_backbone_among_many_is_one_error_before_any_work(te, tmp_path):
    r = te("compare", *ARGS, "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
           "--backbones", "resnet18,resnt50")
    assert r.code == 2 and r.stderr.strip().count("\n") == 0 and "resnt50" in r.stderr and "did you mean" in r.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()


def test_the_pareto_front_keeps_only_points_nothing_beats_on_both():
    points = [(10, 80), (20, 90), (15, 70), (30, 85), (5, 60), (20, 95)]
    assert pareto_front(points) == [(5, 60), (10, 80), (20, 95)]


def test_kendall_tau_reads_agreement_of_two_rankings():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
