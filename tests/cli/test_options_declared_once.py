"""#36: each command's options are declared once, on its config (`core/configs/`), and the CLI is built
from them: the same name, default, choices, range and help, so the command line and Python cannot drift.

A command's only other options say how it runs, not what it computes (--json, --out, --overwrite,
--resume, --nproc, and the positional file it works on); they are listed here, so a new option added to a
command but not to its config fails this test.
"""

from __future__ import annotations

import dataclasses

import click
from click.testing import CliRunner
import pytest

from transfer_engine.cli import bench, cache, compare, doctor, export, extract, finetune, predict, train
from transfer_engine.core import configs
from transfer_engine.core.options import default_of, options_of, run_settings
from transfer_engine.errors import UsageError

COMMANDS = {
    "extract": (extract.extract, configs.ExtractConfig, {"nproc", "as_json"}),
    "train": (train.train, configs.TrainConfig, {"out", "overwrite", "as_json"}),
    "finetune": (finetune.finetune, configs.FinetuneConfig, {"out", "resume", "overwrite", "nproc", "as_json"}),
    "export": (export.export, configs.ExportConfig, {"run", "to_onnx", "out", "overwrite", "as_json"}),
    "predict": (predict.predict, configs.PredictConfig, {"model", "as_json"}),
    "compare": (compare.compare, configs.CompareConfig, {"as_json"}),
    "doctor": (doctor.doctor, configs.DoctorConfig, {"as_json"}),
    "bench": (bench.bench, configs.BenchConfig, {"as_json"}),
    "cache export": (cache.export, configs.CacheExportConfig, {"cache_dir", "out", "overwrite", "as_json"}),
}


def _cli_default(param: click.Parameter):
    """The default as the command receives it (a list option's default is typed as text, "1,8")."""
    if param.type.name == "list":
        return param.type.convert(param.default or "", param, None)
    return param.default


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_of_a_command_is_a_field_of_its_config_with_its_default_choices_and_help(command):
    cli, config, how_it_runs = COMMANDS[command]
    fields = {f.name: (f, spec) for f, spec in options_of(config)}
    params = {p.name: p for p in cli.params if p.name != "help"}
    stray = sorted(set(params) - set(fields) - how_it_runs)
    assert not stray, f"te {command}: options declared outside {config.__name__}: {stray}"
    for name, (field, spec) in fields.items():
        if not spec.cli:
            assert name not in params
            continue
        assert name in params, f"te {command}: {config.__name__}.{name} is not an option"
        param = params[name]
        assert param.help == spec.help, name
        assert param.required == spec.required, name
        if not spec.required and spec.parse != "pairs":
            assert _cli_default(param) == default_of(config, name), name
        if spec.choices is not None and isinstance(param.type, click.Choice):
            assert tuple(param.type.choices) == tuple(c for c in spec.choices if c is not None), name
        if spec.low is not None and isinstance(param.type, (click.IntRange, click.FloatRange)):
            assert (param.type.min, param.type.min_open) == (spec.low, spec.low_open), name


def test_a_command_passes_what_it_was_given_to_its_config(tmp_path, monkeypatch):
    """The generated options reach the config under the field's name (te predict as the example)."""
    seen = {}

    def fake_predict(model, config, **how):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr("transfer_engine.predict.runner.predict", fake_predict)
    result = CliRunner().invoke(predict.predict, [str(tmp_path / "m.onnx"), "--data", "photos", "--top-k", "3",
                                                  "--follow-symlinks"])
    assert result.exit_code == 0, result.output
    config = seen["config"]
    assert (config.data, config.top_k, config.follow_symlinks) == ("photos", 3, True)
    assert config.batch_size == configs.PredictConfig.default("batch_size")


@pytest.mark.parametrize("config, fields, message", [
    (configs.ExtractConfig, {"backbone": "b", "data": "d", "cache": "c", "store": "int4"},
     "--store must be one of fp32, fp16, int8, got 'int4'"),
    (configs.PredictConfig, {"data": "d", "top_k": 0}, "--top-k must be at least 1, got 0"),
    (configs.CompareConfig, {"data": "d", "cache": "c", "backbones": "r", "folds": 1}, "--folds must be at least 2"),
    (configs.BenchConfig, {"suite": "huge"}, "--suite must be one of quick, full"),
    (configs.DoctorConfig, {"cache": "c", "threshold": 1.5}, "--threshold must be at most 1, got 1.5"),
    (configs.DoctorConfig, {"cache": "c", "leaked": "keep"}, "--leaked must be one of drop, train"),
    (configs.CacheExportConfig, {"format": "csv"}, "--format must be one of npy, parquet, got 'csv'"),
    (configs.CacheExportConfig, {"format": "npy", "rows_per_file": 0}, "--rows-per-file must be at least 1, got 0"),
    (configs.FinetuneConfig, {"from_run_dir": "r", "layer_decay": 1.5}, "--layer-decay must be at most 1, got 1.5"),
    (configs.FinetuneConfig, {"from_run_dir": "r", "strategy": "lora", "lora_targets": ()},
     "--lora-targets must be one or more of qkv,proj,mlp"),
])
def test_python_callers_get_the_command_lines_checks_and_wording(config, fields, message):
    with pytest.raises(UsageError, match=message):
        config(**fields)


def test_what_a_run_is_of_comes_from_the_fields_marked_as_changing_it():
    """--resume compares these: a changed learning rate is another run; more workers or budget are not."""
    base = configs.FinetuneConfig(from_run_dir="r")
    assert run_settings(dataclasses.replace(base, lr=1e-3)) != run_settings(base)
    for how in ({"workers": 4}, {"budget_minutes": 3.0}):
        assert run_settings(dataclasses.replace(base, **how)) == run_settings(base), how
    assert "memory_budget" not in run_settings(configs.TrainConfig(cache="c"))
