"""te finetune's --precision auto follows what the CPU can do, so a default run is fast on every family.

Measured (docs/finetune.md, "Precision and speed"): on a CPU with native bf16 (Zen 4) bf16 autocast trains
1.2-2.1x faster than fp32 with the same loss curve; on an AVX2-only CPU bf16 is emulated and several times
slower. So `auto` must pick bf16 on the first and fp32 on the second, and an explicit `--precision bf16`
on the second is a clear error, not a silent 6x slowdown.
"""
import pytest
import torch

from transfer_engine.errors import UsageError
from transfer_engine.finetune import runner

CPU = torch.device("cpu")


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda: native)
    chosen, reason = runner.choose_precision("auto", CPU)
    assert chosen == expected and reason.startswith("auto:") and "native bf16" in reason


def test_bf16_asked_for_on_a_cpu_without_it_is_refused(monkeypatch):
    monkeypatch.setattr(runner, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(UsageError, match="no native bf16"):
        runner.choose_precision("bf16", CPU)
    assert runner.choose_precision("fp32", CPU) == ("fp32", "asked for")
