"""#20 item 2: `--recipe search` (te finetune's default until #39, now test_schedule_recipe.py's schedule)
searches on val within a wall-clock budget. It trains one
run per peak learning rate (highest first) with early stopping, prints and records every trial, keeps
the trial best on val (accuracy, then loss; the start stays a candidate, so the result never ends below
it on val), says plainly when fine-tuning did not pay, and a killed search continues with --resume."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ONE_THREAD, TINY
from linear_run import make_linear_run

from transfer_engine.core.runtime import torch_threads
from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune
from transfer_engine.finetune import fixed as fixed_mod
from transfer_engine.finetune.search import LR_GRID, TRIAL_EPOCHS
from transfer_engine.finetune.trials import search_dir
from transfer_engine.runs import Run

NEW_HEAD = dict(backbone="mobilenet_v3_small", weights="none", data="builtin:digits", head="linear", input_size=32,
                limit=120, batch_size=16, augment="none", progress=False, recipe="search")


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A linear head on random-init MobileNetV3-Small features of 160 real digits at 32 px."""
    with torch_threads(1):
        return make_linear_run(tmp_path_factory.mktemp("lin"), "mobilenet_v3_small", weights="none", input_size=32,
                               limit=160)


def test_the_search_keeps_the_trial_best_on_val(tmp_path, one_thread):
    summary = finetune(tmp_path / "ft", **NEW_HEAD)  # neither epochs nor lr: the whole grid
    trials = summary.search["trials"]
    assert [t["lr"] for t in trials] == list(LR_GRID)  # one trial per rate, highest first
    assert trials[0]["epochs"] == TRIAL_EPOCHS + 1  # freeze_unfreeze: one head-only epoch, then the trial's own
    ran = [t for t in trials if not t["status"].startswith("skipped")]
    top = max(t["val_accuracy"] for t in ran)
    tied = [t for t in ran if t["val_accuracy"] == top]  # of these, the lowest val loss wins (the first on a tie)
    best = min(tied, key=lambda t: t["val_loss"])
    assert summary.search["chosen"] == best["name"] and summary.val_accuracy == pytest.approx(best["val_accuracy"])
    assert summary.val_loss == pytest.approx(best["val_loss"])
    m = Run.open(tmp_path / "ft").metrics
    assert m["search"]["trials"] == trials and m["val_accuracy"] == summary.val_accuracy
    assert not search_dir(tmp_path / "ft").exists()  # the trials are gone once the choice is the run


def test_the_budget_skips_trials_that_would_not_fit(tmp_path, one_thread):
    summary = finetune(tmp_path / "ft", **NEW_HEAD, budget_minutes=0.001)  # 60 ms: only the first trial runs
    statuses = [t["status"] for t in summary.search["trials"]]
    assert not statuses[0].startswith("skipped") and all(s.startswith("skipped") for s in statuses[1:])
    assert summary.search["chosen"] == summary.search["trials"][0]["name"]


def test_when_no_trial_beats_the_start_the_start_is_written_and_said(tmp_path, linear, one_thread):
    # lr 1e-12 cannot move the weights: every trial keeps epoch 0, and the search must say so and write the
    # start itself (the --from head on its backbone), not a trial that merely tied it.
    summary = finetune(tmp_path / "ft", from_run_dir=linear, recipe="search", lr=1e-12, epochs=4, batch_size=16,
                       augment="none", progress=False)
    assert summary.search["paid"] is False and summary.best_epoch == 0
    assert summary.search["verdict"].startswith("fine-tuning did not pay on this data")
    assert summary.val_accuracy == pytest.approx(summary.before["val_accuracy"])
    trial = summary.search["trials"][0]
    # patience 2 counts from the best trained epoch (1), not from the start: epochs 2 and 3 do not beat it
    assert trial["status"] == "stopped early" and trial["epochs_run"] == 3
    parent_head = Run.open(linear).build_model().head.state_dict()
    kept_head = Run.open(tmp_path / "ft").build_model().head.state_dict()
    assert all(torch.equal(parent_head[k], kept_head[k]) for k in parent_head)


def test_patience_stops_a_fixed_recipe_and_keeps_the_best_epoch(tmp_path, linear, one_thread):
    summary = finetune(tmp_path / "ft", from_run_dir=linear, epochs=4, lr=1e-12, patience=1, batch_size=16,
                       augment="none", progress=False)
    # epoch 1 is the best trained epoch; epoch 2 does not beat it, so patience 1 stops before epoch 3
    assert summary.stopped_early and len(summary.history) == 2 and summary.best_epoch == 0
    assert Run.open(tmp_path / "ft").metrics["stopped_early"] is True


def test_a_killed_search_continues_with_resume_and_reuses_finished_trials(tmp_path, monkeypatch, one_thread):
    real = fixed_mod.run_fixed
    calls = []

    def dies_on_the_second_trial(out, config=None, **kw):
        calls.append(out.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C (or a kill) during the second trial
        return real(out, config, **kw)

    monkeypatch.setattr(fixed_mod, "run_fixed", dies_on_the_second_trial)
    with pytest.raises(KeyboardInterrupt):
        finetune(tmp_path / "ft", **NEW_HEAD)
    assert not (tmp_path / "ft").exists() and search_dir(tmp_path / "ft").is_dir()
    with pytest.raises(UsageError, match="--resume"):
        finetune(tmp_path / "ft", **NEW_HEAD)  # neither resumed nor overwritten: refused, nothing lost
    monkeypatch.setattr(fixed_mod, "run_fixed", real)
    summary = finetune(tmp_path / "ft", **NEW_HEAD, resume=True)
    statuses = [t["status"] for t in summary.search["trials"]]
    assert statuses[0] == "reused" and "reused" not in statuses[1:]
    assert Run.open(tmp_path / "ft").metrics["search"]["chosen"] == summary.search["chosen"]


def test_the_cli_prints_every_trial_and_the_verdict(tmp_path, te):
    r = te("finetune", *TINY, "--head", "linear", "--limit", "80", "--batch-size", "16", "--augment", "none",
           "--recipe", "search", "--budget", "0.001", "--out", str(tmp_path / "ft"), env=ONE_THREAD)
    assert r.code == 0, r.stderr
    assert r.stdout.count("  trial ") == len(LR_GRID)  # one per rate, skipped or not
    assert "skipped" in r.stdout and ("did not pay" in r.stdout or "paid" in r.stdout)
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert m["search"]["budget_minutes"] == 0.001


@pytest.mark.parametrize("args,message", [(["--budget", "0"], "--budget"), (["--patience", "-1"], "--patience")])
def test_bad_search_options_are_one_line_errors(tmp_path, te, args, message):
    r = te("finetune", *TINY, "--head", "linear", *args, "--out", str(tmp_path / "ft"))
    assert r.code == 2 and message in r.stderr and "Traceback" not in r.stderr
