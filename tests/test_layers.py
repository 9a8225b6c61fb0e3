"""The layering rule of CONTRIBUTING.md, checked on the source: commands stand on the core, not on each other.

A command package (extract, train, finetune, export, predict, bench, compare, plugins_check) and each
`te` subcommand module (cli/<command>.py) may use another command's public API (te compare runs te
extract and te train), but never its private names: what two commands share belongs in `core/` (or in
the data, cache, runs, heads, backbones layers below). `core/` itself imports no command and no torch at
import time, so the CLI can use it before deciding whether torch is needed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import transfer_engine

PACKAGE = Path(transfer_engine.__file__).parent
COMMANDS = ("extract", "train", "finetune", "export", "predict", "bench", "compare", "plugins_check")
SHARED_CLI = "transfer_engine.cli._common"  # the CLI's own helpers, shared by every subcommand on purpose


def _unit(module: str) -> str | None:
    """The command a module belongs to ("extract", "cli.extract", ...), or None for a shared layer."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in COMMANDS:
        return parts[1]
    if len(parts) > 2 and parts[1] == "cli" and module != SHARED_CLI:
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
