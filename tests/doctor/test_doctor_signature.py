"""te doctor with the copy signature (dct_signature) cached beside the features: near copies the pooled
features miss are found, nothing else crosses the split, the report says which rule judged; without the
signature the report says how to get it. The planted set of conftest.py, plus harder copies (re-encoded at a
low JPEG quality), in a copy of its cache: the shared cache stays without a signature."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from transfer_engine.cli.main import main
from transfer_engine.doctor import summary_lines

from .conftest import doctor_on, planted_variant

HARD = 4  # train digits re-encoded as JPEG (quality 40) into test


@pytest.fixture(scope="module")
def signed(planted, tmp_path_factory):
    """(the cache with both spaces, the hard copies' paths): data set "hard" = the planted set + HARD copies."""

    def hard_copies(train):
        added = []
        for n, r in enumerate(train[30:30 + HARD]):
            buffer = io.BytesIO()
            with Image.open(planted.root / r["path"]) as image:
                image.convert("RGB").save(buffer, "JPEG", quality=40)
            name = f"images/hard-{n}.jpg"
            (planted.root / name).write_bytes(buffer.getvalue())
            added.append((name, r["label"]))
        return added

    cache = tmp_path_factory.mktemp("doctor-signed") / "cache"
    return cache, planted_variant(planted, cache, "hard", hard_copies, ("efficientnet_lite0", "dct_signature"))


def _leaked(found):
    return {item["path"]: item for item in found["leaked"] if item["how"] == "near"}


def test_the_signature_finds_near_copies_the_features_miss_and_no_other_pair_across_splits(signed, planted, tmp_path):
    cache, hard = signed
    # the rule as the benchmark first chose it (signature >= 0.98, features >= 0.85): these JPEG q40 copies sit
    # below the features' default floor, which buys precision on look-alike sets (docs/doctor.md)
    found = doctor_on(cache, "hard", tmp_path / "signed", signature_threshold=0.98,
                      signature_floor=0.85).to_dict()
    # no --backbone: the features beside the signature are meant
    assert found["backbone"] == "efficientnet_lite0"
    rule = found["near_duplicates"]["rule"]
    assert rule["by"] == "signature" and rule["signature_threshold"] > rule["floor"]
    copies = set(planted.near) | set(hard)
    assert set(_leaked(found)) == copies
    across = [p for p in found["near_duplicates"]["list"] if not p["kind"].startswith("within")]
    assert all((p["a"]["path"] in copies) != (p["b"]["path"] in copies) for p in across)  # a copy and its source
    assert all(p["signature"] >= rule["signature_threshold"] for p in across)

    plain = doctor_on(cache, "hard", tmp_path / "plain", signature=False).to_dict()
    assert plain["near_duplicates"]["rule"]["by"] == "features"
    missed = set(hard) - set(_leaked(plain))
    assert missed, "the features alone find every hard copy: the test no longer shows what the signature adds"


def test_the_report_names_the_rule_and_says_how_to_line_up_the_thumbnails(signed, diagnosis, tmp_path, capsys):
    cache, _ = signed
    assert main(["doctor", "--cache", str(cache), "--dataset", "hard", "--out", str(tmp_path / "d"), "--no-sheets"]) == 0
    out = capsys.readouterr().out
    assert "near duplicates (copy signature cosine >= " in out
    # the copy thumbnails are sharper still (test_doctor_aligned.py): the report says how to add them
    assert "te extract --backbone copy_thumbnail" in out and "--name hard" in out
    md = (tmp_path / "d" / "doctor.md").read_text()
    assert "## Near duplicates (copy signature cosine >= " in md and "| signature | cosine |" in md
    # the shared planted cache holds neither: te doctor judges by the features
    assert diagnosis.to_dict()["near_duplicates"]["rule"]["by"] == "features"
    assert any("te extract --backbone copy_thumbnail" in line for line in summary_lines(diagnosis))


@pytest.mark.parametrize("args, says", [
    (["--signature-threshold", "1.5"], "1.5"),
    (["--signature-floor", "-0.1"], "-0.1"),
])
def test_bad_signature_options_are_one_line_and_a_usage_exit_code(signed, tmp_path, capsys, args, says):
    cache, _ = signed
    assert main(["doctor", "--cache", str(cache), "--dataset", "hard", *args, "--out", str(tmp_path / "o"),
                 "--no-sheets"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err.splitlines()[-1] and "Traceback" not in err
