"""docs/plugins.md's complete example plugin, built from the guide's own text: every fenced block with a
`title="PATH"` is written to PATH, the result is installed (pip --target, no index, no build
isolation) and its own tests run in a fresh process that sees it. If te's contract changes and the
guide does not, this fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "plugins.md"
TITLED_BLOCK = re.compile(r'^```[\w-]+ title="(?P<path>[^"]+)"\n(?P<body>.*?)^```$', re.MULTILINE | re.DOTALL)


def guide_files() -> dict[str, str]:
    return {m["path"]: m["body"] for m in TITLED_BLOCK.finditer(GUIDE.read_text())}


def test_the_guide_names_a_complete_plugin():
    files = guide_files()
    assert set(files) == {
        "te-example-plugin/pyproject.toml",
        "te-example-plugin/te_example_plugin/__init__.py",
        "te-example-plugin/tests/test_te_example_plugin.py",
    }
    assert '[project.entry-points."transfer_engine.backbones"]' in files["te-example-plugin/pyproject.toml"]


def test_the_guides_example_installs_and_passes_its_tests(tmp_path):
    for relative, body in guide_files().items():
        path = tmp_path / "src" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(site), str(tmp_path / "src" / "te-example-plugin")],
        check=True, capture_output=True, text=True,
    )
    assert (site / "te_example_plugin" / "__init__.py").is_file()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
           "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    # The example's tests use te's Python API: discovery, `check_plugin` (te plugins check), build and run.
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path / "src"),
         str(tmp_path / "src" / "te-example-plugin" / "tests")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "3 passed" in result.stdout
