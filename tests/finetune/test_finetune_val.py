"""#20 item 1: te finetune on the most common layout, train/CLASS + test/CLASS with no val folder, holds
out the val te train holds out (one rule, core.splits), selects its epoch there and says so; with no
val at all it is a one-line error unless --no-val says to train without selection."""

from __future__ import annotations

import pytest
from PIL import Image
from sklearn.datasets import load_digits

from transfer_engine.cache import Dataset, Record
from transfer_engine.data.sources import content_key, open_source
from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune
from transfer_engine.runs import Run
from transfer_engine.train.data import _labelled_splits

TINY = {"backbone": "mobilenet_v3_small", "weights": "none", "head": "linear", "input_size": 32, "epochs": 1,
        "batch_size": 8, "augment": "none", "progress": False}


def _folder(root, per_class: dict[str, int], classes=(0, 1, 2)):
    """root/SPLIT/CLASS/N.png from real digits (8x8 scans upscaled without smoothing)."""
    digits = load_digits()
    taken = {c: 0 for c in classes}
    for split, count in per_class.items():
        for c in classes:
            (root / split / str(c)).mkdir(parents=True)
            for _ in range(count):
                i = [j for j, t in enumerate(digits.target) if t == c][taken[c]]
                taken[c] += 1
                img = Image.fromarray((digits.images[i] * 15).astype("uint8")).resize((32, 32), Image.NEAREST)
                img.convert("RGB").save(root / split / str(c) / f"{i}.png")
    return root


def _te_train_val(folder) -> list[str]:
    """The val keys te train selects on for this folder (its records as te extract writes them)."""
    source = open_source(str(folder))
    records = [Record(s.path, content_key(source.read_bytes(s)), s.label, s.split) for s in source.samples()]
    return _labelled_splits(Dataset("d", source.class_names, records), [])["val"].keys


def test_a_train_test_folder_is_validated_on_te_trains_hold_out(tmp_path, capfd, one_thread):
    data = _folder(tmp_path / "data", {"train": 14, "test": 4})
    summary = finetune(tmp_path / "ft", data=str(data), **{**TINY, "progress": True})
    err = capfd.readouterr().err
    run = Run.open(tmp_path / "ft")
    held = _te_train_val(data)
    assert len(held) == 3 * 2  # 15% of 14 per class, rounded
    assert run.info.dataset["splits"] == {"train": 3 * 14 - len(held), "val": len(held), "test": 3 * 4}
    assert f"holding out {len(held)} of its 42 train images" in err and "the images te train holds out" in err
    m = run.metrics
    assert m["epochs"][0]["val_accuracy"] is not None and summary.val_accuracy is not None
    assert "val accuracy n/a" not in err


def test_no_val_and_nothing_to_hold_out_is_one_usage_error_unless_no_val(tmp_path, one_thread):
    data = _folder(tmp_path / "data", {"train": 1, "test": 2}, classes=tuple(range(10)))  # one image a class
    with pytest.raises(UsageError, match="no val split and too few train images.*--no-val"):
        finetune(tmp_path / "ft", data=str(data), **{**TINY, "batch_size": 5})
    assert not (tmp_path / "ft").exists()
    summary = finetune(tmp_path / "ft", data=str(data), no_val=True, **{**TINY, "batch_size": 5})
    run = Run.open(tmp_path / "ft")
    assert run.info.dataset["splits"] == {"train": 10, "test": 20}
    assert summary.best_epoch == 1 and run.metrics["epochs"][0]["val_accuracy"] is None  # the last epoch, said
