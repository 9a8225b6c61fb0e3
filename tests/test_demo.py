"""`te demo`: real pretrained features of real digits, through the cache, far better than chance."""

import json


def test_demo_extracts_into_the_cache_then_reuses_it(te, tmp_path):
    r = te("demo", "--limit", "300", "--out", str(tmp_path), "--json")
    assert r.code == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["images"] == 300 and result["extracted"] == 300
    assert result["backbone"] == "efficientnet_lite0" and result["weights"] == "imagenet"
    assert result["test_accuracy"] > 5 * result["chance_accuracy"]  # 10% is chance
    assert json.loads((tmp_path / "demo.json").read_text())["test_accuracy"] == result["test_accuracy"]
    assert "[3/3]" in r.stderr  # progress went to stderr, JSON alone to stdout
    again = te("demo", "--limit", "300", "--out", str(tmp_path))
    assert again.code == 0
    assert "nothing new: all 300 reused from the cache, no model work" in again.stdout
