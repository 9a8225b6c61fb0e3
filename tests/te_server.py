"""A `te` process without Python's and torch's start-up: forked from a server that imported them once.

Most of the suite's time went to `te` subprocesses starting: each imported torch, torchvision, numpy,
onnxruntime, scikit-learn... (about 2 to 4 s a process on the 2-core CI machine, a few hundred processes).
The test's `te` is still a fresh process that runs `python -m transfer_engine ARGS` to its end, with its
own environment, working directory, stdout and stderr and exit code, and ends as the interpreter's exit
does (non-daemon threads joined, atexit handlers run, streams flushed) but for the module teardown
(`_exit`); only the third-party imports are inherited, taken
before any of them ran a computation (no thread pool exists yet to be broken by fork). transfer_engine
itself is imported fresh in every process, so module-level reads of the environment see the test's.

What cannot be reproduced by a fork is run as a real subprocess instead (`forkable`): an environment that
changes how the interpreter or a preloaded library starts (PYTHON*, locale, thread counts, CUDA, ...), and
PYTHONPATH entries that run code at start-up (sitecustomize, .pth files) or shadow a preloaded module.

Protocol (one Unix-socket connection a run): the client sends one JSON request and its two output file
descriptors; the server forks a waiter, the waiter forks the `te` process, waits for it (killing it at the
timeout) and answers {"code": N} or {"timeout": true}.

Run as a script: `python tests/te_server.py SOCKET` prints, once it listens, the JSON list of the
top-level modules it imported.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import socket
import sys

# What a `te` command imports that costs start-up time; imported here once, before any fork. Not
# onnxruntime: a process forked after importing it aborts in its exit handlers (SIGABRT).
PRELOAD = ("numpy", "torch", "torchvision", "torchvision.transforms.v2", "PIL.Image", "click", "onnx",
           "scipy.stats", "sklearn.neighbors", "sklearn.linear_model", "sklearn.model_selection",
           "matplotlib", "matplotlib.pyplot")


PARENT_CHECK_SECONDS = 5


def _preload() -> None:
    import importlib

    os.environ.setdefault("MPLBACKEND", "Agg")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # not installed here: the te process imports it (or not) itself
            pass


def _recv(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 2)
    while not data.endswith(b"\n"):
        more = conn.recv(1 << 20)
        if not more:
            break
        data += more
    return json.loads(data), fds


def _become_te(request: dict, out_fd: int, err_fd: int) -> None:
    """In the forked process: take the request's environment, directory and output, then run te as
    `python -m transfer_engine` does, and end the process (`_exit`)."""
    import importlib
    import io
    import runpy

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    for fd in (null, out_fd, err_fd):
        os.close(fd)
    # Python's own streams for a non-interactive process: stdout block-buffered, stderr line-buffered
    # with backslashreplace, both in the encoding this interpreter chose at start (the environment that
    # decides it is the server's: `forkable`).
    encoding, errors = sys.__stdout__.encoding, sys.__stdout__.errors
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                                 encoding=encoding, errors=errors)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                                   encoding=encoding, errors=errors)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                                   encoding=encoding, errors="backslashreplace",
                                                   line_buffering=True)
    # sys.path as `python -m` builds it: the working directory first, then PYTHONPATH's entries
    sys.path[0] = os.getcwd()
    sys.path[1:1] = [p for p in request.get("pythonpath", []) if p]
    importlib.invalidate_caches()
    sys.argv = ["-m", *request["args"]]
    try:
        runpy.run_module("transfer_engine", run_name="__main__", alter_sys=True)
        code = None
    except SystemExit as exc:
        code = exc.code
    except BaseException:  # what the interpreter does with an uncaught exception at top level
        import traceback

        traceback.print_exc()
        code = 1
    _exit(code)


def _exit(code) -> None:
    """End the te process as the interpreter's own exit does, up to the module teardown: the exit status
    of a SystemExit's code, non-daemon threads joined, atexit handlers run (weakref finalizers, tempfile
    and multiprocessing clean-up among them), the standard streams flushed. The teardown itself (freeing
    every object of the inherited imports, page by page copied on write) took over a second a process."""
    import atexit
    import threading

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code & 0xFF
    else:
        print(code, file=sys.stderr)
        status = 1
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _wait(pid: int, timeout: float) -> dict:
    """Wait for the te process `pid` (a child of this waiter); kill it at `timeout` as subprocess.run does."""
    pidfd = os.pidfd_open(pid)
    ready, _, _ = select.select([pidfd], [], [], timeout)
    os.close(pidfd)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return {"timeout": True}
    _, status = os.waitpid(pid, 0)
    return {"code": os.waitstatus_to_exitcode(status)}


def _serve_one(conn: socket.socket) -> None:
    """In the waiter: fork the te process, wait for it, answer. Neither returns into the server loop."""
    try:
        request, (out_fd, err_fd) = _recv(conn)
        pid = os.fork()
    except BaseException:
        os._exit(1)
    if pid == 0:
        conn.close()
        _become_te(request, out_fd, err_fd)
    try:
        os.close(out_fd)
        os.close(err_fd)
        answer = _wait(pid, request["timeout"])
        conn.sendall((json.dumps(answer) + "\n").encode())
    finally:
        os._exit(0)


def serve(path: str) -> None:
    sys.path.pop(0)  # this script's folder (tests/) is not on a te process's path
    _preload()
    gc.freeze()  # the imports' objects are never collected: a forked process's collections skip them
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # waiters are reaped by the kernel
    # the top-level modules a PYTHONPATH entry must not shadow (`forkable`)
    print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})), flush=True)
    parent = os.getppid()
    server.settimeout(PARENT_CHECK_SECONDS)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:  # the pytest process is gone (killed): so is its server
                return
            continue
        conn.settimeout(None)
        if os.fork() == 0:  # the waiter
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it waits for its te process itself
            _serve_one(conn)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
