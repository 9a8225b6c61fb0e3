"""Plugins that exit, hang or fail to build, head options out of range, and a damaged fine-tuning
checkpoint: each is one clear line naming the culprit, never a silent exit, a hang or an "internal error"
(issue #16 items 6 and 11).

The `te` processes share one site of installed test plugins (tests/plugins: te-test-good, te-test-exits,
te-test-hangs, te-test-faulty) and one tiny image folder, and run with a one-second import timeout, so
the hanging plugin costs each of them a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer_engine.errors import PluginError, UsageError

FAULT = "a fault of the plugin"


@pytest.fixture(scope="module")
def env(faulty_env) -> dict:
    return {**faulty_env, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two classes of ten 40x40 images each (enough for te's train/val split)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir()
        for i in range(10):
            pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def extracted(te, env, images, tmp_path_factory):
    """`te extract` of the tiny backbone with the exiting and hanging plugins installed: (result, cache)."""
    cache = tmp_path_factory.mktemp("cache") / "c"
    result = te("extract", "--backbone", "tiny_cnn", "--weights", "none", "--data", str(images),
                    "--cache", str(cache), "--json", env=env, timeout=120)
    return result, cache


def _no_internal_error(result) -> None:
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_exiting_and_hanging_plugins_are_reported_and_te_backbones_lists_the_rest(te, env):
    """#16 item 6: a plugin calling sys.exit() at import, and one whose import never returns, are each
    reported as broken with their name and reason; `te backbones` lists everything else and exits 0."""
    result = te("backbones", "--json", env=env, timeout=120)
    assert result.code == 0, result.stderr
    names = {row["name"] for row in json.loads(result.stdout)["backbones"]}
    assert {"resnet18", "tiny_cnn", "faulty_raises"} <= names
    warnings = [line for line in result.stderr.splitlines() if "failed to load" in line]
    exits = [line for line in warnings if "'exits'" in line]
    hangs = [line for line in warnings if "'hangs'" in line]
    assert exits and "te-test-exits" in exits[0] and "sys.exit(3)" in exits[0], result.stderr
    assert hangs and "te-test-hangs" in hangs[0] and "did not finish within 1 s" in hangs[0], result.stderr
    assert "TE_PLUGIN_IMPORT_TIMEOUT" in hangs[0]


def test_a_hanging_plugin_does_not_block_extraction_with_another_backbone(extracted):
    """#16 item 6: `te extract` with a backbone of another plugin finishes although a plugin's import hangs."""
    result, _ = extracted
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["backbone"] == "tiny_cnn" and summary["total"] == 20 and not summary["failed"]


def test_a_backbone_whose_build_raises_is_the_plugins_fault(te, env, images, tmp_path):
    """#16 item 11: a plugin backbone whose build raises is named as that plugin's fault (exit 1)."""
    result = te("extract", "--backbone", "faulty_raises", "--weights", "none", "--data", str(images),
                "--cache", str(tmp_path / "c"), env=env, timeout=120)
    assert result.code == 1
    _no_internal_error(result)
    assert ("backbone 'faulty_raises' of plugin 'faulty' (package te-test-faulty 0.1.0): build raised "
            "ValueError: weights layout not understood") in result.stderr
    assert FAULT in result.stderr


def test_a_head_whose_build_raises_is_the_plugins_fault(te, env, extracted, tmp_path):
    """#16 item 11: `te train` with a plugin head whose build raises names the plugin (exit 1)."""
    _, cache = extracted
    result = te("train", "--cache", str(cache), "--head", "faulty_head_raises", "--out", str(tmp_path / "run"),
                env=env, timeout=120)
    assert result.code == 1
    _no_internal_error(result)
    assert "head 'faulty_head_raises' of plugin 'faulty' (package te-test-faulty 0.1.0): build raised ValueError" \
        in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_negative_head_option_is_a_usage_error_naming_the_option(te, env, extracted, tmp_path):
    """#16 item 11: `te train --option hidden=-5` is one line naming the option and its range (exit 2)."""
    _, cache = extracted
    result = te("train", "--cache", str(cache), "--head", "mlp", "--option", "hidden=-5",
                "--out", str(tmp_path / "run"), env=env, timeout=120)
    assert result.code == 2
    _no_internal_error(result)
    assert "head 'mlp' option hidden=-5: expected an integer >= 1" in result.stderr


@pytest.mark.parametrize("head, options, expected", [
    ("mlp", {"hidden": "abc"}, "option hidden='abc': expected an integer >= 1"),
    ("mlp", {"dropout": 1.5}, "option dropout=1.5: expected a number in [0, 1)"),
    ("knn", {"k": 0}, "option k=0: expected an integer >= 1"),
    ("knn", {"temperature": float("nan")}, "option temperature=nan: expected a number > 0"),
])
def test_head_options_are_checked_against_the_heads_declaration(head, options, expected):
    """#16 item 11: a head option of the wrong type or outside its declared range is a UsageError."""
    from transfer_engine.heads import create_head

    with pytest.raises(UsageError) as caught:
        create_head(head, 8, 2, **options)
    assert expected in str(caught.value)


def test_declared_option_types_convert_and_bind_plugins_too():
    """#16 item 11: an integer given for a float option is accepted as a float; a plugin whose own default
    breaks its declared range is refused when its spec is made (so it loads as broken, never half-works)."""
    from transfer_engine.heads import HeadSpec, Option, create_head

    assert create_head("cosine", 8, 2, init_scale=3).log_scale.item() == pytest.approx(np.log(3.0))
    with pytest.raises(ValueError, match="option 'width' is declared as an integer >= 1"):
        HeadSpec("bad_default", lambda i, o, width=0: None, options={"width": Option(0, int, min=1)})


def test_a_head_or_backbone_build_returning_none_is_the_plugins_fault():
    """#16 item 11: a build returning None (not a module) is a PluginError naming the plugin, at build."""
    from transfer_engine.backbones import BackboneSpec, create_backbone, registry as backbones
    from transfer_engine.heads import HeadSpec, create_head, registry as heads

    backbones.register(BackboneSpec("returns_none_bb", 4, build=lambda weights: None), plugin="nonebb")
    heads.register(HeadSpec("returns_none_head", lambda i, o: None), plugin="nonehead")
    try:
        with pytest.raises(PluginError, match="backbone 'returns_none_bb' of plugin 'nonebb'.*build returned "
                                              "NoneType, not a torch.nn.Module"):
            create_backbone("returns_none_bb", weights="none")
        with pytest.raises(PluginError, match="head 'returns_none_head' of plugin 'nonehead'.*build returned "
                                              "NoneType"):
            create_head("returns_none_head", 8, 2)
    finally:
        backbones.unregister("returns_none_bb", plugin="nonebb")
        heads.unregister("returns_none_head", plugin="nonehead")


class _Interrupted(Exception):
    pass


def _interrupted_run(out: Path, checkpoint_every: int) -> dict:
    """A fine-tuning run stopped at the end of its only epoch, before that epoch's checkpoint: its
    checkpoint is the one written at step `checkpoint_every` (0: the one written at the start)."""
    from transfer_engine.finetune import finetune

    def stop(epoch, model):
        raise _Interrupted

    kwargs = dict(backbone="mobilenet_v3_small", weights="none", data="builtin:digits", limit=40, input_size=32,
                  head="linear", epochs=1, batch_size=8, workers=0, progress=False, checkpoint_every=checkpoint_every)
    with pytest.raises(_Interrupted):
        finetune(out, **kwargs, on_epoch_end=stop)
    return kwargs


def test_resume_with_a_damaged_best_checkpoint_is_a_clear_error_or_uses_the_same_weights(tmp_path, one_thread,
                                                                                          capsys):
    """#16 item 11: `te finetune --resume` with a truncated or garbage best.safetensors says so in one
    line; when last.pt holds the very same weights (a checkpoint at an epoch's end) it uses them and says so."""
    from transfer_engine.finetune import finetune
    from transfer_engine.finetune.checkpoint import BEST, checkpoint_dir

    mid = tmp_path / "mid"
    kwargs = _interrupted_run(mid, checkpoint_every=2)  # last.pt is mid-epoch: the best weights are elsewhere
    best = checkpoint_dir(mid) / BEST
    best.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    with pytest.raises(UsageError, match=r"best.safetensors is damaged .* delete .*mid.ckpt"):
        finetune(mid, **kwargs, resume=True)

    start = tmp_path / "start"
    kwargs = _interrupted_run(start, checkpoint_every=0)  # last.pt is the start, which is also the best
    (checkpoint_dir(start) / BEST).write_bytes(b"\x00garbage" * 64)
    summary = finetune(start, **{**kwargs, "progress": True}, resume=True)
    assert summary.resumed and (start / "model.safetensors").is_file()
    assert "best.safetensors is damaged" in capsys.readouterr().err
