"""te doctor on a small real data set with planted problems (tests/doctor/conftest.py): every kind of finding,
the report a person reads, the manifest remedy through te extract and te train, and bad input."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from transfer_engine.cli.main import main
from transfer_engine.doctor.neighbours import NEIGHBOURS

from .conftest import PER_CLASS


def _by_path(items):
    return {item["path"]: item for item in items}


def test_byte_for_byte_copies_across_splits_and_under_two_labels_are_found(diagnosis, planted):
    found = diagnosis.to_dict()
    leaked = _by_path(found["leaked"])
    assert {p for p in planted.exact} <= set(leaked)
    assert all(leaked[p]["how"] == "exact" and leaked[p]["copy_of"]["split"] == "train" for p in planted.exact)
    conflicts = [g for g in found["exact_duplicates"]["groups"] if g["conflicting_labels"]]
    assert [sorted(r["path"] for r in g["records"]) for g in conflicts] == [
        sorted([planted.conflicting, next(r["path"] for r in conflicts[0]["records"] if r["path"] != planted.conflicting)])]
    assert found["exact_duplicates"]["leaked"] == {"val": 0, "test": len(planted.exact)}


def test_near_copies_in_test_are_reported_with_their_cosine_and_nothing_else_crosses_the_split(diagnosis, planted):
    found = diagnosis.to_dict()
    leaked = _by_path(found["leaked"])
    threshold = diagnosis.config.threshold
    for path in planted.near:
        assert leaked[path]["how"] == "near" and threshold <= leaked[path]["cosine"] < 1, path
        assert leaked[path]["copy_of"]["split"] == "train"
    across = [p for p in found["near_duplicates"]["list"] if not p["kind"].startswith("within")]
    assert {p["a"]["path"] for p in across} | {p["b"]["path"] for p in across} >= set(planted.near)
    assert all(planted.near.count(p["a"]["path"]) + planted.near.count(p["b"]["path"]) == 1 for p in across)
    assert set(leaked) == set(planted.exact) | set(planted.near)


def test_flipped_labels_are_among_the_likely_label_errors_and_test_labels_are_not_judged(diagnosis, planted):
    errors = diagnosis.to_dict()["label_errors"]
    flagged = _by_path(errors["list"])
    assert sum(p in flagged for p in planted.flipped) >= 3
    assert len(flagged) <= errors["judged"] // 4  # a short list to look at, not a quarter of the data
    assert {e["split"] for e in errors["list"]} <= {"train", "val"}
    # ten train+val images a class cannot fill a neighbourhood of NEIGHBOURS: the probe judges alone
    assert errors["neighbours"] == 0 and PER_CLASS["train"] + PER_CLASS["val"] <= NEIGHBOURS
    some = flagged[next(p for p in planted.flipped if p in flagged)]
    assert some["predicted"] != some["label"] and 0 <= some["label_probability"] < 0.5


def test_a_photo_among_the_digits_is_the_first_outlier(diagnosis, planted):
    outliers = diagnosis.to_dict()["outliers"]["list"]
    assert outliers and outliers[0]["path"] == planted.outlier


def test_test_accuracy_is_given_with_and_without_the_leaked_images(diagnosis, planted):
    impact = diagnosis.to_dict()["impact"]
    leaked = len(planted.exact) + len(planted.near)
    assert impact["leaked"] == leaked and impact["leaked_only"]["images"] == leaked
    assert impact["without_leaked"]["images"] == impact["all"]["images"] - leaked
    assert impact["leaked_only"]["accuracy"] == 1.0  # copies of train images: memory, not generalisation
    balance = diagnosis.to_dict()["class_balance"]
    assert sum(c["test"] for c in balance["counts"].values()) == impact["all"]["images"]


def test_the_report_holds_every_finding_and_the_contact_sheets_show_them(diagnosis):
    files = diagnosis.files
    assert json.loads(open(files["json"]).read()) == json.loads(json.dumps(diagnosis.to_dict(), default=str))
    md = open(files["md"]).read()
    for heading in ("## Exact duplicates", "## Near duplicates", "## Likely label errors", "## Outliers",
                    "## Class balance", "## What the leaked test images do to the numbers"):
        assert heading in md
    for sheet in ("near_duplicates", "label_errors"):
        with Image.open(files[sheet]) as image:
            assert image.width >= 256 and image.height >= 128
    assert "![near duplicates](near_duplicates.png)" in md


def test_the_manifest_remedy_round_trips_through_te_extract_and_te_train(diagnosis, planted, tmp_path):
    from transfer_engine.doctor import doctor
    from transfer_engine.extract import extract
    from transfer_engine.train import train

    manifest = planted.root / "clean.csv"  # beside the images: relative paths
    d = doctor(planted.cache, dataset="planted", out=tmp_path / "out", write_manifest=manifest, drop_label_errors=True, sheets=False,
               progress=False)
    with manifest.open(newline="") as fh:
        listed = {row["path"]: row for row in csv.DictReader(fh)}
    assert not set(planted.exact + planted.near) & set(listed)
    assert not {e["path"] for e in d.to_dict()["label_errors"]["list"]} & set(listed)
    assert planted.conflicting not in listed
    summary = extract("efficientnet_lite0", str(manifest), planted.cache, name="clean", backend="torch",
                      progress=False)
    assert summary.extracted == 0 and summary.reused == len(listed)  # every row from the cache
    result = train(planted.cache, dataset="clean", head="linear", out=tmp_path / "run", progress=False)
    counts = result.metrics["splits"] if "splits" in result.metrics else None
    assert result.metrics["test_accuracy"] is not None
    tests = sum(1 for row in listed.values() if row["split"] == "test")
    assert tests == diagnosis.to_dict()["splits"]["test"] - len(planted.exact) - len(planted.near)
    assert counts is None or counts.get("test") == tests
    again = doctor(planted.cache, dataset="clean", out=tmp_path / "again", run=str(tmp_path / "run"), sheets=False,
                   progress=False)
    assert again.to_dict()["impact"]["leaked"] == 0 and "linear head of" in again.impact_head


def test_leaked_images_can_move_to_train_instead(diagnosis, planted, tmp_path):
    from transfer_engine.doctor import doctor

    manifest = tmp_path / "moved.csv"  # outside the images' folder: absolute paths
    doctor(planted.cache, dataset="planted", out=tmp_path / "out", write_manifest=manifest, leaked="train", sheets=False,
           progress=False)
    with manifest.open(newline="") as fh:
        listed = {row["path"]: row for row in csv.DictReader(fh)}
    moved = {str(planted.root / p): listed[str(planted.root / p)]["split"] for p in planted.exact + planted.near}
    assert set(moved.values()) == {"train"}
    assert len(listed) == diagnosis.to_dict()["records"]


def test_the_command_prints_its_findings_and_one_json_object(planted, tmp_path, capsys):
    cache = ["--cache", str(planted.cache), "--dataset", "planted"]  # the round trip may have added "clean"
    assert main(["doctor", *cache, "--out", str(tmp_path / "d"), "--no-sheets"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("exact duplicates: ") and "near duplicates (cosine >= " in out and "files: " in out
    assert main(["doctor", *cache, "--out", str(tmp_path / "j"), "--no-sheets", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["dataset"] == "planted" and doc["files"]["md"].endswith("doctor.md")


@pytest.mark.parametrize("args, code, says", [
    (["--cache", "{missing}"], 2, "does not exist"),
    (["--cache", "{cache}", "--dataset", "nope"], 2, "nope"),
    (["--cache", "{cache}", "--dataset", "planted", "--threshold", "1.5"], 2, "1.5"),
    (["--cache", "{cache}", "--dataset", "planted", "--probe", "no_such_head"], 2, "no_such_head"),
    (["--cache", "{cache}", "--dataset", "planted", "--run", "{missing}"], 2, "does not exist"),
])
def test_bad_input_is_one_line_and_a_usage_exit_code(planted, tmp_path, capsys, args, code, says):
    argv = [a.format(cache=planted.cache, missing=tmp_path / "missing") for a in args]
    assert main(["doctor", *argv, "--out", str(tmp_path / "o"), "--no-sheets"]) == code
    err = capsys.readouterr().err.strip()
    assert says in err.splitlines()[-1] and "Traceback" not in err
    assert not any(line.startswith("doctor: ") for line in err.splitlines())  # refused before any work
