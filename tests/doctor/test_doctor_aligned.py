"""te doctor with the copy thumbnails (copy_thumbnail) cached: the two pictures of a candidate pair are lined
up, so cropped copies are found and look-alikes are not; the report says which rule judged. The planted set of
conftest.py plus cropped copies of train digits in test, in a copy of its cache (the shared cache stays as it
is); the aligned score itself on real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from transfer_engine.cli.main import main
from transfer_engine.doctor import summary_lines

from .conftest import doctor_on, planted_variant

# (left, top, right, bottom) kept of a train digit, as fractions: at most 10% of the area cut, from one side or two
CROPS = ((0.0, 0.0, 0.92, 1.0), (0.06, 0.0, 1.0, 0.97), (0.03, 0.04, 0.99, 1.0))


@pytest.fixture(scope="module")
def lined(planted, tmp_path_factory):
    """(the cache with the features and the copy thumbnails, the cropped copies' paths): data set "crops" = the
    planted set + the CROPS copies in test."""

    def cropped_copies(train):
        added = []
        for n, (box, r) in enumerate(zip(CROPS, train[40:])):
            with Image.open(planted.root / r["path"]) as image:
                w, h = image.size
                name = f"images/cropped-{n}.png"
                image.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h))).save(
                    planted.root / name)
            added.append((name, r["label"]))
        return added

    cache = tmp_path_factory.mktemp("doctor-lined") / "cache"
    return cache, planted_variant(planted, cache, "crops", cropped_copies, ("efficientnet_lite0", "copy_thumbnail"))


def test_lined_up_thumbnails_find_every_copy_and_no_other_pair_across_splits(lined, planted, tmp_path):
    cache, cropped = lined
    found = doctor_on(cache, "crops", tmp_path).to_dict()
    assert found["backbone"] == "efficientnet_lite0"  # no --backbone: the features beside the thumbnails are meant
    rule = found["near_duplicates"]["rule"]
    assert rule["by"] == "aligned"
    copies = set(planted.near) | set(cropped)
    leaked = {item["path"] for item in found["leaked"] if item["how"] == "near"}
    assert leaked == copies
    across = [p for p in found["near_duplicates"]["list"] if not p["kind"].startswith("within")]
    assert all((p["a"]["path"] in copies) != (p["b"]["path"] in copies) for p in across)  # a copy and its source
    assert all(p["aligned"] >= rule["aligned_threshold"] and p["cosine"] >= rule["floor"] for p in across)
    # --no-aligned: the thumbnails are there but not used; with no signature cached the features judge
    plain = doctor_on(cache, "crops", tmp_path / "plain", aligned=False)
    assert plain.rule["by"] == "features" and plain.rule["why"].startswith("--no-aligned")
    # and the summary does not tell the user to extract the thumbnails they turned off (and have)
    assert not any("copy_thumbnail" in line for line in summary_lines(plain))


def _thumbnail(image: Image.Image) -> np.ndarray:
    """The copy_thumbnail backbone's row for one picture, as te extract computes it."""
    import torch

    from transfer_engine.backbones import create_backbone, get_backbone_spec

    spec = get_backbone_spec("copy_thumbnail")
    with torch.no_grad():
        return create_backbone("copy_thumbnail")(spec.preprocess.transform()(image.convert("RGB"))[None]).numpy()[0]


def test_the_aligned_score_sees_through_a_crop_a_resize_and_a_re_encode_not_another_photo_or_a_larger_crop():
    from skimage import data as photos

    from transfer_engine.core.configs.doctor import ALIGNED_SCORE
    from transfer_engine.doctor.aligned import aligned_scores

    coffee = Image.fromarray(photos.coffee())               # 600 x 400
    w, h = coffee.size
    buffer = io.BytesIO()
    coffee.crop((0, 0, round(0.93 * w), round(0.97 * h))).resize((300, 194), Image.BICUBIC).save(buffer, "JPEG",
                                                                                                  quality=70)
    copy = Image.open(io.BytesIO(buffer.getvalue()))
    other = Image.fromarray(photos.chelsea())                 # another photo of the same size class
    shifted = coffee.crop((round(0.2 * w), 0, w, h))          # a fifth cut off: no longer "a little"
    thumbs = np.stack([_thumbnail(im) for im in (coffee, copy, other, shifted)])
    scores = aligned_scores(thumbs, np.array([[0, 1], [1, 0], [0, 2], [0, 3]]))
    assert scores[0] >= ALIGNED_SCORE and scores[0] == scores[1]  # the copy lines up, whichever side is asked
    assert scores[2] < 0.5 and scores[3] < ALIGNED_SCORE


def test_scoring_a_picture_or_two_at_a_time_gives_the_same_scores(monkeypatch):
    # a large set's pictures are read PICTURES_AT_ONCE at a time (with the pictures they are compared with)
    from skimage import data as photos

    from transfer_engine.doctor import aligned

    thumbs = np.stack([_thumbnail(Image.fromarray(photo)) for photo in
                       (photos.coffee(), photos.chelsea(), photos.astronaut(), photos.coffee()[20:, 30:])])
    pairs = np.array([[0, 1], [0, 3], [2, 3], [1, 2], [0, 2]])
    whole = aligned.aligned_scores(thumbs, pairs)
    for at_once in (1, 2):
        monkeypatch.setattr(aligned, "PICTURES_AT_ONCE", at_once)
        assert np.allclose(aligned.aligned_scores(thumbs, pairs), whole, rtol=0, atol=1e-6)
    assert whole[1] >= 0.99 and whole[0] < 0.5  # the crop of the coffee lines up, another photo does not


def test_a_picture_lines_up_with_itself_exactly():
    # the crops are resampled with the filter the whole pictures are (a sharper one scored a picture against
    # itself 0.998 to 0.999: the margin a pixel-identical copy has over --aligned-threshold)
    from skimage import data as photos

    from transfer_engine.doctor.aligned import aligned_scores

    thumbs = [_thumbnail(Image.fromarray(photo)) for photo in (photos.coffee(), photos.astronaut())]
    scores = aligned_scores(np.stack([thumbs[0], thumbs[0], thumbs[1], thumbs[1]]), np.array([[0, 1], [2, 3]]))
    assert scores == pytest.approx(1.0, abs=1e-5)


def test_the_report_names_the_aligned_rule_and_the_signature_rule_points_to_the_thumbnails(lined, diagnosis, tmp_path,
                                                                                          capsys):
    cache, _ = lined
    assert main(["doctor", "--cache", str(cache), "--dataset", "crops", "--out", str(tmp_path / "d"),
                 "--no-sheets"]) == 0
    out = capsys.readouterr().out
    assert "near duplicates (copy thumbnails aligned >= " in out and "te extract --backbone copy_thumbnail" not in out
    md = (tmp_path / "d" / "doctor.md").read_text()
    assert "## Near duplicates (copy thumbnails aligned >= " in md and "| aligned | cosine |" in md
    # the shared planted cache holds neither: te doctor judges by the features and says what to run
    hint = [line for line in summary_lines(diagnosis) if "te extract --backbone copy_thumbnail" in line]
    assert len(hint) == 1 and f"--cache {diagnosis.config.cache}" in hint[0] and "--name planted" in hint[0]


@pytest.mark.parametrize("args, says", [
    (["--aligned-threshold", "1.5"], "1.5"),
    (["--aligned-floor", "-0.1"], "-0.1"),
])
def test_bad_aligned_options_are_one_line_and_a_usage_exit_code(lined, tmp_path, capsys, args, says):
    cache, _ = lined
    assert main(["doctor", "--cache", str(cache), "--dataset", "crops", *args, "--out", str(tmp_path / "o"),
                 "--no-sheets"]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err.splitlines()[-1] and "Traceback" not in err
