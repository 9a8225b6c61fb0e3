"""te extract across machines: each node writes only its own delta, no index is opened from two nodes,
and the result is the cache one process builds, bit for bit, also after a node is killed and the run
resumed. Two "nodes" here are two torchrun launches (--nnodes 2) on one machine, each with its own
node-local folder, meeting on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transfer_engine.extract import nodes

from .test_extract_cli import ONE_BACKEND, TINY, extract_json, features_by_key, make_folder

# Loaded by every Python process of a node (PYTHONPATH): logs each index it opens, so the test can
# prove which node opened what.
_SITECUSTOMIZE = '''
import os
if os.environ.get("TE_TEST_INDEX_LOG"):
    import transfer_engine.cache.index as _index
    _open = _index.Index.__init__
    def _logged(self, path, *args, **kwargs):
        with open(os.environ["TE_TEST_INDEX_LOG"], "a") as log:
            log.write(f"{os.environ.get('GROUP_RANK', '-')} {os.getpid()} {os.path.abspath(path)}\\n")
        _open(self, path, *args, **kwargs)
    _index.Index.__init__ = _logged
'''


def test_present_keys_answer_membership_like_a_set(tmp_path):
    import torch

    from transfer_engine.cache import FeatureCache, FeatureSpace

    keys = [hashlib.sha256(f"img{i}".encode()).hexdigest() for i in range(0, 2000, 2)]
    with FeatureCache.open(tmp_path / "cache") as cache:
        space = cache.space(FeatureSpace(backbone="b", weights_digest="0" * 64, transform={}, dim=4))
        space.append(keys, torch.randn(len(keys), 4))
        present = nodes.shared_present_keys(cache, space.id, rank=0)  # one process: no collective
    asked = [hashlib.sha256(f"img{i}".encode()).hexdigest() for i in range(0, 60)] + ["ab" * 32]
    assert present.contains(asked) == [i % 2 == 0 for i in range(60)] + [False]
    assert len(present) == 1000
    assert nodes.PresentKeys(present._keys[:0]).contains(asked[:3]) == [False] * 3


def test_the_node_layout_comes_from_torchrun(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("GROUP_RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    layout = nodes.node_layout(world=12)
    assert (layout.node, layout.nodes, layout.local_rank, layout.writes_delta) == (2, 3, 1, True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert not nodes.node_layout(world=2).multi  # torchrun on one machine: CACHE directly, as before
    path = nodes.delta_path(Path("/c"), None, layout)
    assert path.parent == Path("/c/nodes") and path.name.endswith("-node2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(node: int, port: int, data: Path, cache: Path, local: Path, env: dict) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node-rank={node}",
           "--nproc-per-node=1", "--master-addr=127.0.0.1", f"--master-port={port}",
           "-m", "transfer_engine", "extract", *TINY, *ONE_BACKEND, "--data", str(data), "--cache", str(cache),
           "--node-cache", str(local), "--batch-size", "8", "--json"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _two_nodes(data, cache, tmp_path, env, timeout=120):
    """Both nodes' te extract to the end; their exit codes must be 0. A launch that outlives `timeout` is
    a hang: both nodes are killed and the test fails saying so (never a stuck CI)."""
    for attempt in range(2):
        port = _free_port()
        procs = [_launch(k, port, data, cache, tmp_path / f"local{k}", env) for k in (0, 1)]
        outs = _finish(procs, timeout)
        if attempt == 0 and any("address already in use" in err.lower() for _, err in outs):
            continue  # another test took the free port between the probe and torchrun's bind: once more
        break
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return json.loads(outs[0][0])


def _finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for q in procs:
                _kill_node(q)
            pytest.fail(f"a two-node launch was still running after {timeout:.0f} s: a hang")
    return outs


def _kill_node(agent: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """`sig` to a whole "machine": torchrun's workers (each in a session of its own), then torchrun."""
    kids = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    for pid in [int(k) for k in kids] + [agent.pid]:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@pytest.fixture
def node_env(good_plugin_site, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    log = tmp_path / "index-opens.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(good_plugin_site)]),
           "TE_TEST_INDEX_LOG": str(log), "OMP_NUM_THREADS": "1"}
    return env, log


def _opens(log: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in log.read_text().splitlines():
        node, _, path = line.split(" ", 2)
        out.setdefault(node, set()).add(path)
    return out


def test_two_nodes_build_the_one_process_cache_and_never_open_each_others_index(te, good_plugin_site, node_env,
                                                                                tmp_path):
    env, log = node_env
    data = tmp_path / "data"
    make_folder(data, 40)
    one, _ = extract_json(te, {"PYTHONPATH": str(good_plugin_site)}, *ONE_BACKEND, "--data", str(data),
                          "--cache", str(tmp_path / "one"))

    two = _two_nodes(data, tmp_path / "two", tmp_path, env)

    assert (two["extracted"], two["total"], two["space"]) == (40, 40, one["space"])
    got, got_records = features_by_key(tmp_path / "two", "data")
    want, want_records = features_by_key(tmp_path / "one", "data")
    assert got_records == want_records and got.keys() == want.keys()
    assert all(bool((got[k] == want[k]).all()) for k in want)
    assert te("cache", "verify", str(tmp_path / "two")).code == 0
    opened = _opens(log)
    main = str(tmp_path / "two" / "index.sqlite")
    assert opened["0"] == {main}  # node 0: the cache only
    (delta_index,) = opened["1"]  # node 1: its own delta, in its own node-local folder
    assert delta_index.startswith(str(tmp_path / "local1")) and main not in opened["1"]
    assert not any((tmp_path / "local1").iterdir())  # merged, then removed


@pytest.mark.slow
def test_a_killed_node_resumes_from_its_delta(te, good_plugin_site, node_env, tmp_path):
    env, _ = node_env
    data = tmp_path / "data"
    make_folder(data, 800, size=64)
    cache = tmp_path / "cache"
    port = _free_port()
    procs = [_launch(k, port, data, cache, tmp_path / f"local{k}", env) for k in (0, 1)]
    deadline = time.monotonic() + 240
    delta_rows = 0
    while time.monotonic() < deadline and delta_rows < 16:
        time.sleep(0.1)
        delta_rows = _committed_rows(tmp_path / "local1")
        assert procs[1].poll() is None, "node 1 finished before it could be killed; make the data set larger"
    assert delta_rows >= 16, "node 1 never committed a batch"
    for p in procs[::-1]:  # node 1 dies (kill -9); the job's scheduler then ends node 0
        _kill_node(p)
        p.wait()

    resumed = _two_nodes(data, cache, tmp_path, env)

    assert resumed["reused"] >= delta_rows and resumed["extracted"] + resumed["reused"] == 800
    straight, _ = extract_json(te, {"PYTHONPATH": str(good_plugin_site)}, *ONE_BACKEND, "--data", str(data),
                               "--cache", str(tmp_path / "straight"))
    got, got_records = features_by_key(cache, "data")
    want, want_records = features_by_key(tmp_path / "straight", "data")
    assert got_records == want_records and all(bool((got[k] == want[k]).all()) for k in want)
    assert te("cache", "verify", str(cache)).code == 0


def _committed_rows(folder: Path) -> int:
    import sqlite3

    for index in folder.glob("*/index.sqlite"):
        try:
            with sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=1) as db:
                return db.execute("SELECT count(*) FROM rows").fetchone()[0]
        except sqlite3.Error:
            return 0
    return 0


PEER_TIMEOUT = 5  # TE_PEER_TIMEOUT of the failure tests, seconds


# The frozen case's mechanism (no heartbeat) is covered in make test by tests/core/test_distributed.py;
# its process-level run is slow, like the soak, to keep make test within its time budget.
@pytest.mark.parametrize("how", [signal.SIGKILL, pytest.param(signal.SIGSTOP, marks=pytest.mark.slow)],
                         ids=["killed", "frozen"])
def test_a_node_lost_mid_run_ends_the_job_with_one_line_naming_it(node_env, tmp_path, how):
    """Node 1 dies (kill -9 of its worker and its torchrun) or freezes (SIGSTOP) while extracting: node 0
    finishes its own share, then ends within the peer timeout with exit 1 and one line naming node 1,
    instead of waiting in a collective for torch's 30 minutes."""
    env, _ = node_env
    env = {**env, "TE_PEER_TIMEOUT": str(PEER_TIMEOUT)}
    data = tmp_path / "data"
    make_folder(data, 800, size=64)
    port = _free_port()
    procs = [_launch(k, port, data, tmp_path / "cache", tmp_path / f"local{k}", env) for k in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while _committed_rows(tmp_path / "local1") < 8:
            assert procs[1].poll() is None, "node 1 ended before it could be lost; make the data set larger"
            assert time.monotonic() < deadline, "node 1 never committed a batch"
            time.sleep(0.05)
        _kill_node(procs[1], how)
        lost = time.monotonic()
        _, err = procs[0].communicate(timeout=120)
        waited = time.monotonic() - lost
    finally:
        for p in procs:
            _kill_node(p)
            p.wait()
    te_lines = [line for line in err.splitlines() if line.startswith("te:")]
    assert procs[0].returncode != 0
    assert len(te_lines) == 1 and te_lines[0].startswith("te: error: rank 1 (node 1, host "), err[-3000:]
    assert f"stopped answering: no heartbeat for {PEER_TIMEOUT} s" in te_lines[0]
    assert waited < 60, f"node 0 took {waited:.0f} s to give up"  # its own share + 5 s, on a loaded CI machine


@pytest.mark.slow
def test_soak_two_nodes_30_times_beside_a_cpu_load_never_hang(good_plugin_site, node_env, tmp_path):
    """The soak of the two-node run (a fresh-clone CI once hung in it): 30 launches while two busy
    processes load both cores; each must end, both nodes with exit 0, within `_two_nodes`' limit."""
    env, _ = node_env
    data = tmp_path / "data"
    make_folder(data, 40)
    load = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        for run in range(30):
            out = _two_nodes(data, tmp_path / f"cache{run}", tmp_path / f"run{run}", env)
            assert out["extracted"] == 40
    finally:
        for p in load:
            p.kill()
