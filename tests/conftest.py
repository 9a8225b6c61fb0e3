"""Shared fixtures: real installed test plugins, and running `te` as a user would (a subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_te(*args: str, env: dict | None = None, timeout: float = 300, cwd: Path | None = None) -> Result:
    """Run `python -m transfer_engine ARGS` in a fresh process and capture everything.

    The process is forked from a server that has the third-party libraries imported (tests/te_server.py),
    unless its environment asks for a real start (`_TeServer.forkable`) or TE_TEST_SUBPROCESS=1 is set.
    """
    full_env = {**os.environ, **(env or {})}
    if "TE_DEBUG" not in (env or {}):
        full_env.pop("TE_DEBUG", None)  # the tests look at what users see: no tracebacks
    cwd = Path(cwd or os.getcwd())
    if os.environ.get("TE_TEST_SUBPROCESS") != "1" and hasattr(os, "pidfd_open"):  # Linux: fork and pidfds
        server = _TeServer.running()
        pythonpath = server.forkable(full_env)
        if pythonpath is not None:
            return server.run(args, full_env, pythonpath, timeout, cwd)
    proc = subprocess.run(
        [sys.executable, "-m", "transfer_engine", *args],
        capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


class _TeServer:
    """This pytest process's te_server (started at its first `te` run, ended with the process)."""

    _instance: "_TeServer | None" = None
    # Variables read when the interpreter or a preloaded library starts: a run that changes one starts
    # for real. PYTHONPATH is `forkable`'s own case.
    STARTUP_PREFIXES = ("PYTHON", "LC_", "LANG", "OMP_", "MKL_", "OPENBLAS_", "KMP_", "GOMP_", "CUDA", "TORCH",
                        "NVIDIA", "LD_", "MPLBACKEND", "ORT_")

    def __init__(self) -> None:
        import atexit
        import json
        import tempfile

        self.folder = Path(tempfile.mkdtemp(prefix="te-server-"))
        self.socket = str(self.folder / "socket")
        self.env = dict(os.environ)
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("te_server.py")), self.socket],
                                     stdout=subprocess.PIPE, text=True, env=self.env)
        self.preloaded = set(json.loads(self.proc.stdout.readline() or "null") or ())
        if not self.preloaded:
            raise RuntimeError("tests/te_server.py did not start: run with TE_TEST_SUBPROCESS=1 to bypass it")
        atexit.register(self.stop)

    @classmethod
    def running(cls) -> "_TeServer":
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def forkable(self, env: dict) -> list[str] | None:
        """The PYTHONPATH entries to add to a forked process's sys.path, or None when `env` needs a real
        start: it changes a start-up variable, or adds a PYTHONPATH entry that runs code at start-up
        (sitecustomize, usercustomize, .pth files) or holds a module the server already imported."""
        for key in set(env) | set(self.env):
            if key != "PYTHONPATH" and key.startswith(self.STARTUP_PREFIXES) and env.get(key) != self.env.get(key):
                return None
        before = self.env.get("PYTHONPATH", "").split(os.pathsep)
        added = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in before]
        for entry in map(Path, added):
            names = {p.name.partition(".")[0] for p in entry.iterdir()} if entry.is_dir() else set()
            if {"sitecustomize", "usercustomize"} & names or any(entry.glob("*.pth")) or names & self.preloaded:
                return None
        return added

    def run(self, args: tuple[str, ...], env: dict, pythonpath: list[str], timeout: float, cwd: Path) -> Result:
        import io
        import json
        import locale
        import socket
        import tempfile

        request = json.dumps({"args": list(args), "env": env, "pythonpath": pythonpath, "timeout": timeout,
                              "cwd": str(cwd)}).encode() + b"\n"
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.socket)
            sent = socket.send_fds(conn, [request], [out.fileno(), err.fileno()])
            conn.sendall(request[sent:])
            answer = json.loads(conn.makefile("rb").readline() or b'{"code": null}')
            if answer.get("timeout"):
                raise subprocess.TimeoutExpired([sys.executable, "-m", "transfer_engine", *args], timeout)
            if answer["code"] is None:
                raise RuntimeError(f"tests/te_server.py gave no exit code for te {' '.join(args)}")

            def text(f) -> str:  # as subprocess.run(text=True) decodes it
                f.seek(0)
                return io.TextIOWrapper(f, encoding=locale.getpreferredencoding(False)).read()

            return Result(answer["code"], text(out), text(err))


def install_test_plugins(target: Path, *names: str) -> Path:
    """Really install the test plugin distributions `names` (from tests/plugins) into `target`.

    Each is built from a private copy of its source: setuptools builds in the source folder (build/,
    *.egg-info), and two pytest workers building one plugin there at once could each remove the other's
    files, installing a distribution without its module.
    """
    sources = target.with_name(target.name + "-src")
    for n in names:
        shutil.copytree(TEST_PLUGINS / n, sources / n, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
         "--no-build-isolation", "--no-index", "--target", str(target), *(str(sources / n) for n in names)],
        check=True, capture_output=True, text=True,
    )
    return target


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """A folder where the test plugin distributions are really installed (pip --target)."""
    return install_test_plugins(tmp_path_factory.mktemp("plugin-site"), "te-test-good", "te-test-broken",
                                "te-test-clash")


@pytest.fixture(scope="session")
def good_plugin_site(tmp_path_factory) -> Path:
    """Only the well-behaved test plugin installed (for tests where the others would interfere)."""
    return install_test_plugins(tmp_path_factory.mktemp("good-plugin-site"), "te-test-good")


@pytest.fixture(scope="session")
def nonconforming_site(tmp_path_factory) -> Path:
    """te-test-nonconforming installed alone (it loads fine; only building its models shows the faults)."""
    return install_test_plugins(tmp_path_factory.mktemp("nonconforming-site"), "te-test-nonconforming")


@pytest.fixture(scope="session")
def faulty_site(tmp_path_factory) -> Path:
    """The plugins that misbehave without raising at import: one exits, one hangs, one's builds fail
    (te-test-faulty), beside te-test-good's tiny backbone for the runs that must still work."""
    return install_test_plugins(tmp_path_factory.mktemp("faulty-plugin-site"), "te-test-good", "te-test-exits",
                                "te-test-hangs", "te-test-faulty")


@pytest.fixture
def one_thread():
    """One compute thread for the test: on the shared 2-core CI machine two OpenMP threads run far slower
    than one once anything else is busy (small matmuls gain nothing from a second thread)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def with_path(site: Path) -> dict:
    """Environment that makes a `te` subprocess see the plugins installed in `site`."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="session")
def te():
    """`te(*args, env=...)` runs the CLI in a subprocess and returns (code, stdout, stderr)."""
    return run_te


@pytest.fixture(scope="session")
def faulty_env(faulty_site) -> dict:
    """Environment for a `te` subprocess that sees `faulty_site`, giving up on an import after one second."""
    return {**with_path(faulty_site), "TE_PLUGIN_IMPORT_TIMEOUT": "1"}


@pytest.fixture
def plugin_env(plugin_site):
    """Environment for a `te` subprocess that sees the good, broken and clashing test plugins."""
    return with_path(plugin_site)


# The modules whose tests took longest (`pytest --durations=0`, 2026-12-06), longest first.
LONGEST_MODULES = ("tests/test_demo.py", "tests/finetune/test_qat.py", "tests/export/test_export.py",
                   "tests/extract/test_nodes.py", "tests/finetune/test_ddp.py", "tests/finetune/test_resume.py",
                   "tests/extract/test_extract_parts.py", "tests/extract/test_memory.py",
                   "tests/faults/test_cache_faults.py", "tests/finetune/test_schedule_recipe.py")


def _longest_first(nodeid: str) -> int:
    module = nodeid.partition("::")[0]
    return LONGEST_MODULES.index(module) if module in LONGEST_MODULES else len(LONGEST_MODULES)


def pytest_collection_modifyitems(config, items):
    import torch

    # pytest-xdist hands tests out in collection order: a long test collected last runs alone at the
    # suite's end while the other worker sits idle. So the longest go first, the demo test before all
    # (`make test` also lets an idle worker take queued tests from the busy one: --dist worksteal).
    items.sort(key=lambda item: _longest_first(item.nodeid))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
