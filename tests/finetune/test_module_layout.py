"""finetune/'s modules call in one direction: the entry dispatches to the search or to one fixed run, the
search runs fixed runs directly (never the public `finetune()`), and no module imports one above it."""

from __future__ import annotations

import ast
from pathlib import Path

import transfer_engine.finetune as package

# From the bottom up: a module may import only those before it.
ORDER = ["records", "plots", "data", "distributed", "lora", "qat", "strategies", "precision", "selection", "checkpoint",
         "start", "loop", "finish", "job", "cost", "epochs", "fixed", "trials", "search", "__init__"]


def _imports(path: Path) -> set[str]:
    """The finetune/ modules `path` imports (at any depth of its code)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith("transfer_engine.finetune."):
                found.add(node.module.split(".")[2])
            elif node.module == "transfer_engine.finetune":  # a module, or a name of the entry (__init__)
                found.update(alias.name if alias.name in ORDER else "__init__" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("transfer_engine.finetune."))
    return found


def test_every_module_of_finetune_has_its_place_in_the_order():
    modules = {p.stem for p in Path(package.__file__).parent.glob("*.py")}
    assert modules == set(ORDER)


def test_modules_import_only_the_modules_below_them():
    upward = []
    for path in sorted(Path(package.__file__).parent.glob("*.py")):
        rank = ORDER.index(path.stem)
        upward += [f"{path.stem} imports {name}" for name in sorted(_imports(path)) if ORDER.index(name) >= rank]
    assert not upward, "\n".join(upward)
