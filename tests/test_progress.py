"""The progress lines of te extract, te predict and te finetune, off a terminal (CI logs, pipes): plain
lines, throttled, the last one always drawn, one message on a line of its own. One drawer serves all, and
one keyword (`progress=`: True, False or a function taking each line) says where every command's lines go."""

from __future__ import annotations

import pytest

from transfer_engine.core.progress import ProgressLine, renamed, say_of
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


def test_a_function_is_handed_every_line_plain_and_nothing_goes_to_stderr(capsys):
    """progress=FUNCTION: what a log would get (plain lines at its pace), handed to the function."""
    lines: list[str] = []
    p = StepProgress(lines.append, epochs=2, steps=10, every=0)
    p.update(0, 4, 12.5, 0.25)
    p.line("epoch 1: val accuracy 90.0%")
    meter = PredictProgress(2, enabled=lines.append, label="predict", every=0)
    meter.update(2)
    meter.close()
    assert capsys.readouterr().err == ""
    assert lines[:2] == ["finetune: epoch 1/2 step 4/10 12.5 img/s loss 0.2500 (6 steps left in the epoch)",
                         "epoch 1: val accuracy 90.0%"]
    assert len(lines) == 3 and lines[2].startswith("predict: 2/2 images, 0 failed")


def test_one_keyword_resolves_to_where_the_lines_go(capsys):
    lines: list[str] = []
    say_of(lines.append)("to the function")
    say_of(True)("to stderr")
    say_of(False)("nowhere")
    say_of(None)("nowhere either")
    assert lines == ["to the function"] and capsys.readouterr().err == "to stderr\n"


def test_a_keyword_that_progress_replaced_still_works_and_says_so():
    lines: list[str] = []
    with pytest.warns(DeprecationWarning, match=r"predict\(log=\.\.\.\) is deprecated: pass progress=\.\.\."):
        given = renamed(False, "log", lines.append, "predict")
    assert given == lines.append
    assert renamed(True, "log", None, "predict") is True
