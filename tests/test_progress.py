"""The progress lines of te extract, te predict and te finetune, off a terminal (CI logs, pipes): plain
lines, throttled, the last one always drawn, one message on a line of its own. One drawer serves all."""

from __future__ import annotations

from transfer_engine.core.progress import ProgressLine
from transfer_engine.extract.progress import Progress as ExtractProgress
from transfer_engine.finetune.loop import StepProgress
from transfer_engine.predict.progress import Progress as PredictProgress


def test_a_log_gets_no_line_before_every_seconds_and_the_final_line_always(capsys):
    p = ExtractProgress(10, label="digits", every=3600)
    p.update(done=4, reused=2)
    assert capsys.readouterr().err == ""  # throttled: nothing yet
    p.update(done=3, failed=1)
    p.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("digits: 10/10 (new 7, reused 2, failed 1)")
    assert "\r" not in err[0]


def test_with_no_wait_every_update_is_a_plain_line(capsys):
    p = PredictProgress(2, label="predict", every=0)
    p.update(1)
    p.update(1, failed=1)  # the last image: close() draws the final line, not update()
    p.close()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("predict: 1/2 images, 0 failed") and "ETA" in err[0]
    assert err[1].startswith("predict: 2/2 images, 1 failed") and "ETA" not in err[1]


def test_finetune_steps_and_messages(capsys):
    p = StepProgress(True, epochs=2, steps=10, every=0)
    p.update(0, 4, 12.5, 0.25)
    p.line("epoch 1: val accuracy 90.0%")
    err = capsys.readouterr().err.splitlines()
    assert err == ["finetune: epoch 1/2 step 4/10 12.5 img/s loss 0.2500 (6 steps left in the epoch)",
                   "epoch 1: val accuracy 90.0%"]


def test_disabled_draws_nothing(capsys):
    line = ProgressLine(enabled=False, every=0)
    assert not line.due()
    line.message("hidden")
    StepProgress(False, 1, 1, every=0).update(0, 1, 1.0, 1.0)
    ExtractProgress(1, enabled=False).close()
    assert capsys.readouterr().err == ""
