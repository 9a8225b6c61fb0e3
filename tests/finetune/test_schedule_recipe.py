"""#39: te finetune's default recipe is one well-shaped run whose length is sized to the budget (measured
before it starts), not three short trials splitting it. Its candidates are the start and the last epoch
only (`--keep final`): the run never ends below the start on val, and one val split of a hundred images
is asked one question instead of picking the luckiest of many epochs. The run, its settings and the
choice are printed and recorded, and a killed run resumes with the same length."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ONE_THREAD, TINY
from linear_run import make_linear_run

from transfer_engine.core.runtime import torch_threads
from transfer_engine.errors import UsageError
from transfer_engine.finetune import finetune
from transfer_engine.finetune import cost as cost_mod
from transfer_engine.finetune import fixed as fixed_mod
from transfer_engine.finetune.search import (MIN_TRIAL_EPOCHS, SCHEDULE_EPOCHS, SCHEDULE_JSON, SCHEDULE_LR,
                                             SCHEDULE_SETTINGS)
from transfer_engine.finetune.trials import search_dir
from transfer_engine.runs import Run

NEW_HEAD = dict(backbone="mobilenet_v3_small", weights="none", data="builtin:digits", head="linear", input_size=32,
                limit=120, batch_size=16, augment="none", progress=False)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    """A linear head on pretrained EfficientNet-Lite0 features of 160 real digits at 32 px (a start well above
    chance, so a worse last epoch is visible on val)."""
    with torch_threads(1):
        return make_linear_run(tmp_path_factory.mktemp("lin"), "efficientnet_lite0", weights="DEFAULT", input_size=32,
                               limit=160)


def wreck_the_head(epoch, model):
    """on_epoch_end: zero the head after epoch 1's validation, so epoch 2 ends at chance level."""
    if epoch == 1:
        with torch.no_grad():
            for p in model.head.parameters():
                p.zero_()


def test_the_default_is_one_run_with_the_schedule_s_settings_and_says_what_it_chose(tmp_path, linear, one_thread):
    summary = finetune(tmp_path / "ft", from_run_dir=linear, batch_size=16, budget_minutes=0.05, progress=False)
    (trial,) = summary.search["trials"]  # one run: the budget goes to its epochs, not to parallel trials
    assert trial["lr"] == SCHEDULE_LR and MIN_TRIAL_EPOCHS <= trial["epochs"] <= SCHEDULE_EPOCHS
    assert summary.search["chosen"] == trial["name"] and summary.search["verdict"]
    assert summary.search["recipe"] == "schedule"
    hp = Run.open(tmp_path / "ft").info.hyperparameters
    assert {k: hp[k] for k in SCHEDULE_SETTINGS} == SCHEDULE_SETTINGS
    # the two candidates: the start (epoch 0) or the last epoch, never one in between
    assert summary.best_epoch in (0, trial["epochs"])
    if summary.best_epoch:
        assert summary.val_accuracy >= summary.before["val_accuracy"]
    assert not search_dir(tmp_path / "ft").exists()


def test_an_option_the_user_gives_wins_over_the_schedule_s_own(tmp_path, linear, one_thread):
    summary = finetune(tmp_path / "ft", from_run_dir=linear, batch_size=16, label_smoothing=0.2, keep="best",
                       budget_minutes=0.001, progress=False)
    hp = Run.open(tmp_path / "ft").info.hyperparameters
    assert hp["label_smoothing"] == 0.2 and hp["keep"] == "best"
    assert hp["weight_decay"] == SCHEDULE_SETTINGS["weight_decay"]  # not given: the schedule's
    assert summary.search["trials"][0]["epochs"] == MIN_TRIAL_EPOCHS  # 60 ms of budget: the fewest epochs


def test_the_budget_sets_the_length_of_the_run(tmp_path, linear, one_thread, monkeypatch):
    costs = []
    real = cost_mod.measure_cost
    monkeypatch.setattr(cost_mod, "measure_cost", lambda cfg: costs.append(real(cfg)) or costs[-1])
    summary = finetune(tmp_path / "ft", from_run_dir=linear, recipe="schedule", batch_size=16, budget_minutes=0.05,
                       epochs=6, progress=False)
    (cost,) = costs
    epochs = summary.search["trials"][0]["epochs"]
    # the most epochs (up to --epochs 6) whose measured cost fits the 3 s, and at least MIN_TRIAL_EPOCHS
    fitting = [e for e in range(1, 7) if cost.run_seconds(e) <= 3.0]
    assert epochs == max(max(fitting, default=0), MIN_TRIAL_EPOCHS)
    assert cost.steps_per_epoch > 0 and cost.step > 0 and cost.eval_image > 0


def test_keep_final_writes_the_start_when_the_last_epoch_is_worse_on_val(tmp_path, linear, one_thread):
    summary = finetune(tmp_path / "ft", from_run_dir=linear, recipe="fixed", epochs=2, lr=1e-12, keep="final",
                       batch_size=16, augment="none", progress=False, on_epoch_end=wreck_the_head)
    assert summary.best_epoch == 0  # epoch 1 was fine, but only the start and the last epoch are candidates
    # the start is reproduced exactly: its head, and its accuracies through the same pipeline
    assert summary.test_accuracy == summary.before["test_accuracy"]
    assert summary.val_accuracy == summary.before["val_accuracy"]
    parent_head = Run.open(linear).build_model().head.state_dict()
    kept_head = Run.open(tmp_path / "ft").build_model().head.state_dict()
    assert all(torch.equal(parent_head[k], kept_head[k]) for k in parent_head)


def test_keep_final_keeps_the_last_epoch_when_it_is_not_worse_on_val(tmp_path, linear, one_thread):
    summary = finetune(tmp_path / "ft", from_run_dir=linear, recipe="fixed", epochs=2, lr=1e-12, keep="final",
                       batch_size=16, augment="none", progress=False)
    assert summary.best_epoch == 2 and summary.val_accuracy == summary.before["val_accuracy"]


def test_a_killed_schedule_resumes_with_the_same_length(tmp_path, monkeypatch, one_thread):
    real = fixed_mod.run_fixed

    def killed(out, config=None, **kw):
        raise KeyboardInterrupt  # the user's Ctrl-C (or a kill) during the run

    monkeypatch.setattr(fixed_mod, "run_fixed", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(tmp_path / "ft", **NEW_HEAD)
    planned = json.loads((search_dir(tmp_path / "ft") / SCHEDULE_JSON).read_text())
    with pytest.raises(UsageError, match="--resume"):
        finetune(tmp_path / "ft", **NEW_HEAD)  # neither resumed nor overwritten: refused, nothing lost
    monkeypatch.setattr(fixed_mod, "run_fixed", real)
    monkeypatch.setattr(cost_mod, "measure_cost", lambda cfg: pytest.fail("a resumed schedule measured again"))
    summary = finetune(tmp_path / "ft", **NEW_HEAD, resume=True)
    assert summary.search["trials"][0]["epochs"] == planned["epochs"]


def test_the_cli_prints_the_run_and_the_verdict(tmp_path, te):
    r = te("finetune", *TINY, "--head", "linear", "--limit", "80", "--batch-size", "16", "--augment", "none",
           "--budget", "0.001", "--out", str(tmp_path / "ft"), env=ONE_THREAD)
    assert r.code == 0, r.stderr
    assert f"recipe: one run of {MIN_TRIAL_EPOCHS + 1} epochs" in r.stderr  # freeze_unfreeze: 1 head-only epoch
    assert "over the 0.001-minute budget" in r.stderr
    assert "paid" in r.stdout or "did not pay" in r.stdout


def test_a_start_whose_head_saw_val_is_still_kept_over_a_wrecked_last_epoch(tmp_path, linear, one_thread):
    # te train --sweep refits its head on train+val: the start's val accuracy is optimistic, but a last
    # epoch that cannot even reach it (here: at chance) must not replace it
    import shutil

    from transfer_engine.runs.format import FITTED_ON_TRAIN_VAL

    refitted = tmp_path / "refitted"
    shutil.copytree(linear, refitted)
    metrics = json.loads((refitted / "metrics.json").read_text())
    metrics.setdefault("hyperparameters", {})["fitted_on"] = FITTED_ON_TRAIN_VAL
    (refitted / "metrics.json").write_text(json.dumps(metrics))

    summary = finetune(tmp_path / "ft", from_run_dir=refitted, recipe="fixed", epochs=2, lr=1e-12, keep="final",
                       batch_size=16, augment="none", progress=False, on_epoch_end=wreck_the_head)
    assert not summary.start_candidate and summary.best_epoch == 0
    assert summary.test_accuracy == summary.before["test_accuracy"]
