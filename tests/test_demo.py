"""`te demo`: the whole path on real digits with real pretrained weights, every step reported, every
accuracy measured on the same test split and far better than chance; the exported models agree."""

import csv
import json



def test_demo_runs_every_step_and_reports_the_test_accuracy_of_each_model(te, tmp_path):
    # 300 digits: int8 is checked on 98 held-out ones, where one flipped answer is a point of agreement
    r = te("demo", "--limit", "300", "--int8-min-agreement", "0.9", "--out", str(tmp_path), "--json", timeout=900)
    assert r.code == 0, r.stderr[-3000:]
    result = json.loads(r.stdout)  # JSON alone on stdout, the step lines on stderr
    assert all(f"[{n}/6]" in r.stderr for n in range(1, 7))
    assert result["images"] == 300 and result["extract"]["extracted"] == 300
    assert result["backbone"] == "efficientnet_lite0" and result["weights"] == "imagenet"
    assert [row["head"] for row in result["leaderboard"]][0] == result["best_head"]
    assert {row["head"] for row in result["leaderboard"]} >= {"linear", "mlp", "cosine", "knn"}
    chance = result["chance_accuracy"]
    for key in ("linear_probe_test_accuracy", "best_head_test_accuracy", "finetuned_test_accuracy",
                "onnx_fp32_test_accuracy", "onnx_int8_test_accuracy"):
        assert result[key] > 5 * chance, key  # 10% is chance
    # The fp32 ONNX model is the fine-tuned PyTorch model: same test digits, same answers (up to the
    # in-graph resize, at most one digit in a hundred apart).
    assert abs(result["onnx_fp32_test_accuracy"] - result["finetuned_test_accuracy"]) <= 0.01 + 1e-9
    assert result["parity"]["fp32"]["top1_agreement"] == 1.0 and result["parity"]["int8"]["top1_agreement"] >= 0.9
    with open(result["files"]["predictions_int8"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == result["test_images"] and all(row["prediction"] for row in rows)
    assert json.loads((tmp_path / "demo.json").read_text()) == result
