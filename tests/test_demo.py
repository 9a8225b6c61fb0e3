"""`te demo`: the whole path on real digits with real pretrained weights, every step reported, every
accuracy measured on the same test split and far better than chance; the exported models agree."""

import csv
import json



def test_demo_runs_every_step_and_reports_the_test_accuracy_of_each_model(te, tmp_path):
    # 300 digits: int8 is checked on 98 held-out ones, where one flipped answer is a point of agreement.
    # te export's own 99% gate; no speed rule (a test asserts no timing): int8 is deployed exactly when
    # some int8/float mix agrees with PyTorch on 99% of them, and refused with the reason otherwise.
    r = te("demo", "--limit", "300", "--int8-min-speedup", "0", "--out", str(tmp_path), "--json", timeout=900)
    assert r.code == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)  # JSON alone on stdout, the step lines on stderr
    assert all(f"[{n}/6]" in r.stderr for n in range(1, 7))
    assert result["images"] == 300 and result["extract"]["extracted"] == 300
    assert result["backbone"] == "efficientnet_lite0" and result["weights"] == "imagenet"
    assert [row["head"] for row in result["leaderboard"]][0] == result["best_head"]
    assert {row["head"] for row in result["leaderboard"]} >= {"linear", "mlp", "cosine", "knn"}
    chance = result["chance_accuracy"]
    for key in ("linear_probe_test_accuracy", "best_head_test_accuracy", "finetuned_test_accuracy",
                "onnx_fp32_test_accuracy"):
        assert result[key] > 5 * chance, key  # 10% is chance
    # The fp32 ONNX model is the fine-tuned PyTorch model: same test digits, same answers (up to the
    # in-graph resize, at most one digit in a hundred apart).
    assert abs(result["onnx_fp32_test_accuracy"] - result["finetuned_test_accuracy"]) <= 0.01 + 1e-9
    assert result["parity"]["fp32"]["top1_agreement"] == 1.0
    int8 = result["int8"]
    assert int8["recipe"] == "portable" and int8["steps"][0]["float_nodes"] == 0  # all int8 is tried first
    assert int8["deployed"] == (result["parity"]["int8"]["top1_agreement"] >= 0.99)
    if int8["deployed"]:
        assert result["onnx_int8_test_accuracy"] > 5 * chance and "[5/6] te export" in r.stderr
        with open(result["files"]["predictions_int8"], newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == result["test_images"] and all(row["prediction"] for row in rows)
    else:  # refused with te export's reason; the fp32 model is what was deployed and predicted with
        assert "99.0%" in int8["refused"] and "int8 refused" in r.stderr and result["onnx_int8_test_accuracy"] is None
        assert json.loads(open(result["files"]["int8_refusal_report"]).read())["passed"] is False
    with open(result["files"]["predictions_fp32"], newline="") as f:
        assert len(list(csv.DictReader(f))) == result["test_images"]
    assert json.loads((tmp_path / "demo.json").read_text()) == result
