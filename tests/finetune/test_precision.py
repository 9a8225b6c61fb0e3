"""te finetune's --precision auto follows what the CPU can do, so a default run is fast on every family.

Measured (docs/finetune.md, "Precision and speed"): on a CPU with native bf16 (Zen 4) bf16 autocast trains
1.2-2.1x faster than fp32 with the same loss curve; on an AVX2-only CPU bf16 is emulated and several times
slower. So `auto` must pick bf16 on the first and fp32 on the second, and an explicit `--precision bf16`
on the second is a clear error, not a silent 6x slowdown.
"""
import pytest
import torch

from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune, precision
from transfer_engine.runs import Run

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    chosen, reason = precision.choose_precision("auto", CPU)
    assert chosen == expected and reason.startswith("auto:") and "native bf16" in reason


def test_bf16_asked_for_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(UsageError, match="no native bf16"):
        precision.choose_precision("bf16", CPU)
    assert precision.choose_precision("fp32", CPU) == ("fp32", "asked for")


def test_bf16_training_is_evaluated_in_fp32_so_the_start_and_the_selection_see_what_is_shipped(monkeypatch, tmp_path):
    # Allowed on any CPU for this test (emulated bf16 is slow, but this model is tiny at 32 px).
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    runs = {}
    for chosen in ("fp32", "bf16"):
        finetune(tmp_path / chosen, backbone="mobilenet_v3_small", weights="none", data="builtin:digits",
                 head="linear", input_size=32, limit=120, batch_size=16, epochs=1, lr=1e-3, augment="none",
                 precision=chosen, progress=False)
        runs[chosen] = Run.open(tmp_path / chosen)
    fp32, bf16 = (runs[p].metrics for p in ("fp32", "bf16"))
    assert runs["bf16"].info.hyperparameters["precision"] == "bf16"
    # The same start evaluated bit for bit alike: an autocast evaluation would round its logits to bf16.
    assert bf16["before"] == fp32["before"]
    # and training did run in bf16: the epoch differs, but not by more than bf16's rounding would explain.
    assert bf16["epochs"][0]["train_loss"] != fp32["epochs"][0]["train_loss"]
    assert abs(bf16["epochs"][0]["train_loss"] - fp32["epochs"][0]["train_loss"]) < 0.1 * fp32["epochs"][0]["train_loss"]
