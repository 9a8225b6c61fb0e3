"""#17: te finetune's and te train's settings are typed, frozen configs. Their defaults are the CLI's
(nothing is spelt twice), their choice lists are the CLI's, and a wrong value is one usage line before
any model work."""

from __future__ import annotations

import dataclasses
import sys

import click
import pytest

from transfer_engine.cli.finetune import finetune as finetune_command
from transfer_engine.core import choices
from transfer_engine.cli.train import train as train_command
from transfer_engine.core.configs import FinetuneConfig, TrainConfig
from transfer_engine.errors import UsageError


def _cli_params() -> dict[str, click.Parameter]:
    return {p.name: p for p in finetune_command.params}


def test_every_config_field_is_a_cli_option_with_the_same_default():
    params = _cli_params()
    for f in dataclasses.fields(FinetuneConfig):
        name = f.name  # the option's parameter is the field's name (cli/_options.py)
        if f.name == "head_options":
            assert name not in params  # a new head's options come from Python only
            continue
        assert name in params, f"--{f.name.replace('_', '-')} missing from te finetune"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        cli_default = params[name].default
        if params[name].type.name == "list":  # a list option's default is typed as text, e.g. "qkv,proj,mlp"
            cli_default = params[name].type.convert(cli_default, params[name], None)
        assert (cli_default or ()) == (default or ()) if f.name == "milestones" else cli_default == default, f.name


def test_the_cli_offers_exactly_the_choices_the_code_accepts():
    params = _cli_params()
    for name, allowed in (("strategy", choices.STRATEGIES), ("optimizer", choices.OPTIMIZERS),
                          ("augment", choices.AUGMENTS), ("precision", choices.FINETUNE_PRECISIONS),
                          ("device", choices.DEVICES), ("keep", choices.KEEP)):
        assert tuple(params[name].type.choices) == allowed, name
    from transfer_engine.finetune import STRATEGIES
    from transfer_engine.finetune.strategies import make_strategy
    assert STRATEGIES == choices.STRATEGIES
    for name in STRATEGIES:  # every name offered builds a strategy
        make_strategy(name, 6, unfreeze_epoch=1, milestones=(1, 2) if name == "unfreeze_milestones" else (),
                      freeze_bn=True)


@pytest.mark.parametrize("fields,message", [
    ({}, "either --from RUN or --backbone"),
    ({"from_run_dir": "r", "backbone": "resnet18"}, "either --from RUN or --backbone"),
    ({"backbone": "resnet18", "data": "d"}, "--backbone needs --data SRC and --head"),
    ({"from_run_dir": "r", "epochs": 0}, "--epochs must be at least 1, got 0"),
    ({"from_run_dir": "r", "lr": 0.0}, "--lr must be positive"),
    ({"from_run_dir": "r", "keep": "first"}, "--keep must be one of best, last, final, got 'first'"),
    ({"from_run_dir": "r", "strategy": "melt"}, "--strategy must be one of freeze, no_freeze"),
    ({"from_run_dir": "r", "augment": "mixup"}, "--augment must be one of crop\\+flip, crop, none"),
])
def test_a_wrong_setting_is_one_usage_error_when_the_config_is_made(fields, message):
    with pytest.raises(UsageError, match=message):
        FinetuneConfig(**fields)


def test_the_config_is_frozen_and_needs_no_torch():
    config = FinetuneConfig(from_run_dir="runs/linear", milestones=[1, 2])
    assert config.milestones == (1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 5  # type: ignore[misc]
    import subprocess
    code = ("import sys; from transfer_engine.core.configs import FinetuneConfig; "
            "FinetuneConfig(from_run_dir='r'); assert 'torch' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_train_config_field_is_a_te_train_option_with_the_same_default():
    params = {p.name: p for p in train_command.params}
    for f in dataclasses.fields(TrainConfig):
        name = f.name  # the option's parameter is the field's name (cli/_options.py)
        assert name in params, f"--{f.name.replace('_', '-')} missing from te train"
        if f.name in ("cache", "head"):
            assert params[name].required  # no default on the command line
        elif f.name == "options":
            assert params[name].multiple  # --option KEY=VALUE, repeatable; none by default
        elif getattr(params[name], "is_flag", False) and not params[name].secondary_opts:
            assert f.default is False, f.name  # a flag is off unless given
        else:  # a value, or an on/off pair (--refit/--no-refit)
            assert params[name].default == f.default, f.name
    assert tuple(params["device"].type.choices) == choices.DEVICES


@pytest.mark.parametrize("fields, message", [
    ({"sweep": True, "weight_decay": 1e-3}, "exclude each other"),
    ({"head": "all", "options": {"hidden": 8}}, "head options apply to one head"),
    ({"device": "tpu"}, "--device must be one of auto, cpu, cuda"),
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"lr": -1.0}, "--lr must be positive"),
])
def test_a_wrong_train_setting_is_one_usage_error_when_the_config_is_made(fields, message):
    with pytest.raises(UsageError, match=message):
        TrainConfig(cache="feats", **fields)


def test_train_fits_one_head_and_train_all_returns_the_leaderboard(tmp_path):
    from transfer_engine.train import train

    with pytest.raises(UsageError, match="train_all"):  # one return type each; refused before any work
        train(TrainConfig(cache=str(tmp_path / "none"), head="all"), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_every_choice_the_cli_offers_is_a_list_from_core_choices():
    from transfer_engine.cli.main import cli as te_main

    from transfer_engine.onnx.recipes import RECIPES  # the int8 recipe table itself

    lists = {tuple(v) for k, v in vars(choices).items() if k.isupper() and isinstance(v, tuple)} | {tuple(RECIPES)}

    def commands(group):
        for command in group.commands.values():
            yield from commands(command) if isinstance(command, click.Group) else [command]

    offered = [(command.name, p.name, tuple(p.type.choices)) for command in commands(te_main)
               for p in command.params if isinstance(p.type, click.Choice)]
    assert len(offered) >= 12  # device, precision, backend, store, strategy, layout, provider, ...
    stray = [o for o in offered if o[2] not in lists]
    assert not stray, f"choice lists spelt outside transfer_engine/core/choices.py: {stray}"
