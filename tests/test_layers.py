"""The layering rule of CONTRIBUTING.md, checked on the source: commands stand on the core, not on each other.

A single-purpose command package (extract, train, finetune, export, predict, plugins_check) imports no
other command at all: what two commands share belongs in `core/` or in the layers below (onnx, data,
cache, runs, heads, backbones). The composites (compare, bench, demo.py, doctor) run whole commands one after
another (te compare runs te extract, then te train for each backbone), so they may call a command's
public top-level API (`from transfer_engine.extract import extract`), never its modules. Each `te`
subcommand module (cli/<command>.py) may use a command's public API, never its private names. `core/`
itself imports no command and no torch at import time, so the CLI can use it before deciding whether
torch is needed.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import transfer_engine

PACKAGE = Path(transfer_engine.__file__).parent
COMMANDS = ("extract", "train", "finetune", "export", "predict", "bench", "compare", "doctor", "plugins_check")
SINGLE_PURPOSE = ("extract", "train", "finetune", "export", "predict", "plugins_check")
# Run other commands whole, through their top-level API only. te doctor is one: its label errors come from
# te train's head fitted k-fold (`transfer_engine.train.out_of_fold_probabilities`), and moving the fit below
# the commands would move te train itself.
COMPOSITES = ("compare", "bench", "demo", "doctor")
# The CLI's own helpers, shared by every subcommand on purpose (_options: the click options built from a config)
SHARED_CLI = ("transfer_engine.cli._common", "transfer_engine.cli._options")


def _unit(module: str) -> str | None:
    """The command a module belongs to ("extract", "cli.extract", ...), or None for a shared layer."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in COMMANDS:
        return parts[1]
    if len(parts) > 2 and parts[1] == "cli" and module not in SHARED_CLI:
        return "cli." + parts[2]
    return None


def _imports(path: Path):
    """(imported module, imported names) for every `from transfer_engine... import ...` in the file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transfer_engine."):
            yield node.module, [a.name for a in node.names]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(rel.parts), path


def test_no_command_imports_another_commands_private_names():
    crossings = []
    for module, path in _modules():
        me = _unit(module)
        if me is None:
            continue
        for source, names in _imports(path):
            other = _unit(source)
            if other is None or other == me:
                continue
            private = [n for n in names if n.startswith("_")]
            private += [p for p in source.split(".") if p.startswith("_")]
            if private:
                crossings.append(f"{module} imports {', '.join(private)} from {source}")
    assert not crossings, "move what two commands share into transfer_engine/core:\n" + "\n".join(crossings)


def test_train_and_finetune_take_their_runtime_from_the_core_not_from_extract():
    """Device, precision, autocast and torchrun helpers once lived in extract/ and were borrowed."""
    borrowed = [f"{module} imports {source}" for module, path in _modules()
                if _unit(module) in ("train", "finetune", "cli.train", "cli.finetune")
                for source, _ in _imports(path) if _unit(source) in ("extract", "cli.extract")]
    assert not borrowed, "\n".join(borrowed)


def test_the_core_and_the_building_blocks_import_no_command():
    """core/, runs, cache, data, heads, backbones, ops, registry sit below every command."""
    tops = ("__main__", "demo", "cli", *COMMANDS)  # te's entry points and the commands themselves
    uses = [f"{module} imports {source}" for module, path in _modules() if module.split(".")[1] not in tops
            for source, _ in _imports(path) if source.split(".")[1] in ("cli", *COMMANDS)]
    assert not uses, "\n".join(uses)


def test_the_core_imports_without_torch():
    """Checked in a fresh interpreter where importing torch fails, as on a machine without it."""
    modules = sorted(m for m, _ in _modules() if m.startswith("transfer_engine.core."))
    code = ("import sys\n"
            "class _NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'numpy'):\n"
            "            raise ImportError('no ' + name)\n"
            "sys.meta_path.insert(0, _NoTorch())\n"
            f"for m in {modules!r}:\n"
            "    __import__(m)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(modules) >= 6  # choices, configs, cpu, process, runtime, splits


def _command(module: str) -> str | None:
    """The command package a module belongs to (a composite's too: "compare", "demo"), or None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in (*SINGLE_PURPOSE, *COMPOSITES) else None


def _imported(module: str, path: Path):
    """(module, names) for every import of te's own code in the file, in any form: `import transfer_engine.x`,
    `from transfer_engine import x` (as importing transfer_engine.x) and relative imports (resolved)."""
    package = module.split(".")[:-1]  # a package's own __init__ counts as inside it
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names if a.name.split(".")[0] == "transfer_engine")
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                source = ".".join(package[:len(package) - node.level + 1] + ([source] if source else []))
            names = [a.name for a in node.names]
            if source == "transfer_engine":
                yield from ((f"transfer_engine.{n}", []) for n in names)
            elif source.startswith("transfer_engine."):
                yield source, names


def test_a_single_purpose_command_imports_no_other_command():
    """extract, train, finetune, export, predict and plugins_check share only what lies below them
    (onnx/: ONNX export, onnxruntime sessions, the model metadata, the int8 recipes and quantizer)."""
    crossings = [f"{module} imports {source}" for module, path in _modules() if _command(module) in SINGLE_PURPOSE
                 for source, _ in _imported(module, path) if _command(source) not in (None, _command(module))]
    assert not crossings, "move what two commands share below them (transfer_engine/onnx, core, ...):\n" + \
        "\n".join(crossings)


def test_a_composite_runs_other_commands_through_their_top_level_api_only():
    """te compare runs `extract()` then `train()`; te demo runs every command: each through the names the
    command's package exports (`__all__`), never through a module inside it."""
    crossings = []
    for module, path in _modules():
        me = _command(module)
        if me not in COMPOSITES:
            continue
        for source, names in _imported(module, path):
            other = _command(source)
            if other in (None, me):
                continue
            top = f"transfer_engine.{other}"
            public = set(getattr(importlib.import_module(top), "__all__", ()))
            if source != top or not names or not set(names) <= public:
                crossings.append(f"{module} imports {', '.join(names) or 'itself'} from {source}"
                                 + (f" (the public API: from {top} import {', '.join(sorted(public))})"
                                    if public else ""))
    assert not crossings, "\n".join(crossings)


def test_the_shared_onnx_machinery_imports_no_command():
    """onnx/ sits below every command that exports, runs or quantizes an ONNX graph."""
    onnx = [(module, path) for module, path in _modules() if module.startswith("transfer_engine.onnx.")]
    uses = [f"{module} imports {source}" for module, path in onnx for source, _ in _imported(module, path)
            if source.split(".")[1] in ("cli", "demo", *COMMANDS)]
    assert onnx, "transfer_engine/onnx/ holds the ONNX machinery commands share"
    assert not uses, "\n".join(uses)


def test_the_cache_knows_no_models_and_no_command():
    """cache/ stores the features of a space given as plain values (a backbone's name, weights digest,
    transform, dim: `Backbone.space_fields()`, on the caller's side), so it imports no backbone and no command."""
    cache = [(module, path) for module, path in _modules() if module.startswith("transfer_engine.cache.")]
    uses = [f"{module} imports {source}" for module, path in cache for source, _ in _imported(module, path)
            if source.split(".")[1] in ("backbones", "cli", "demo", *COMMANDS)]
    assert cache, "transfer_engine/cache/ holds the feature cache"
    assert not uses, "\n".join(uses)


def test_the_data_sources_import_nothing_from_the_cache():
    """data/ reads images and names them; the cache stores what data/ read. How a file name is shown
    (`core.paths`) and an image's key (`core.digest.content_key`) sit below both, so data/ needs no cache."""
    data = [(module, path) for module, path in _modules() if module.startswith("transfer_engine.data.")]
    uses = [f"{module} imports {source}" for module, path in data for source, _ in _imported(module, path)
            if source.split(".")[1] == "cache"]
    assert data, "transfer_engine/data/ holds the data sources"
    assert not uses, "move what data/ and cache/ share into transfer_engine/core:\n" + "\n".join(uses)
