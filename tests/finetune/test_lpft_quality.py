"""LP-FT on real data: from a linear head on pretrained EfficientNet-Lite0 features of the real digits,
two epochs of fine-tuning end at least at the linear run's test accuracy (in practice well above it).

Slow (26 s of CPU time here, over a minute on the shared machine: the features of 1,797 digits, then
two epochs and the evaluations); test_finetune_cli.py checks the same behaviour with a random-init
ResNet-18 on 400 digits. Measured: linear 85.2% test, after LP-FT 93.1% (val 83.2% -> 92.3%)."""

from __future__ import annotations

import pytest
from linear_run import make_linear_run

from transfer_engine.finetune import finetune


@pytest.mark.slow
def test_lp_ft_with_pretrained_efficientnet_lite0_on_real_digits_reaches_the_linear_accuracy(tmp_path, one_thread):
    linear = make_linear_run(tmp_path, "efficientnet_lite0", weights="DEFAULT", input_size=32)
    s = finetune(tmp_path / "ft", from_run_dir=linear, epochs=2, augment="none", progress=False)
    assert s.parent is not None and s.parent["test_accuracy"] > 0.7  # the linear run is a real baseline
    assert abs(s.before["test_accuracy"] - s.parent["test_accuracy"]) < 0.01  # same model, image path
    assert s.test_accuracy >= s.parent["test_accuracy"]
    assert s.history[-1]["val_accuracy"] > s.before["val_accuracy"]  # fine-tuning itself improved it
