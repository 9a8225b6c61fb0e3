"""Inputs real data sets hold: names that are not UTF-8, FIFOs and devices named like images, endless and
huge files, decompression bombs, unreadable folders, symlink loops and links, relative paths, a plugin
whose features have the wrong size, Ctrl-C while a read blocks (issue #16 items 2, 3, 4, 8, 9 and 11).

Two `te extract` processes see most of them at once (a folder holding every fault, run without root's
power to read any folder, so that a folder without permissions really is unreadable; a manifest naming
/dev/zero, a FIFO, a sparse file over the size limit); the rest runs in this process on a few 16-pixel
images and the tiny backbone of the te-test-good plugin.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transfer_engine.cache import FeatureCache
from transfer_engine.core.paths import fs_path
from transfer_engine.data.files import DEFAULT_MAX_FILE_BYTES

NON_UTF8 = os.fsdecode(b"caf\xe9.png")  # as Python lists a name that is not UTF-8: lossless surrogate escapes
SHOWN = "caf\\xe9.png"  # how te shows it to people
MESSY = os.fsdecode(b"m\xe9ssy")  # the data root's name is not UTF-8 either: it names the data set
MESSY_SHOWN = "m\\xe9ssy"


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _bomb(path: Path) -> None:
    """A 12 KB PNG that declares 10000 x 10000 pixels (100 MP, ~300 MB decoded as RGB)."""
    Image.new("1", (10000, 10000)).save(path)


def _seeing(site: Path) -> dict:
    """Environment for a `te` subprocess that sees the plugins installed in `site` (and this PYTHONPATH)."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def _without_read_override() -> None:
    """In the child, before exec: drop the capabilities that let root read any folder (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH) from the bounding set, so that a folder without permissions really is unreadable.
    A no-op for a user who is not root (permissions stop them anyway)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="module")
def messy(tmp_path_factory, good_plugin_site):
    """`te extract --json` (relative --data, without root's power to read any folder) of a folder holding
    every fault a walk meets: (result, data root, cache)."""
    work = tmp_path_factory.mktemp("messy-work")
    root = work / MESSY
    for i in range(4):
        _image(root / "cat" / f"{i}.png", i)
        _image(root / "dog" / f"{i}.png", 10 + i)
    _image(root / "cat" / NON_UTF8, 20)
    os.mkfifo(root / "cat" / "pipe.png")  # no writer: a plain open() waits forever
    _bomb(root / "dog" / "bomb.png")
    (root / "dog" / "loop").symlink_to("..")  # the data root again: endless before
    (root / "kittens").symlink_to("cat")  # a class folder linked to another: its images would count twice
    _image(work / "elsewhere" / "x.png", 30)
    (root / "cat" / "outside.png").symlink_to(work / "elsewhere" / "x.png")
    _image(root / "dog" / "secret" / "hidden.png", 40)
    (root / "dog" / "secret").chmod(0)
    env = {**os.environ, **_seeing(good_plugin_site), "OMP_NUM_THREADS": "1"}
    env.pop("TE_DEBUG", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "transfer_engine", "extract", "--backbone", "tiny_cnn", "--weights", "none",
             "--backend", "torch", "--workers", "2", "--data", MESSY, "--cache", "feats", "--json"],
            cwd=work, env=env, capture_output=True, text=True, timeout=120, preexec_fn=_without_read_override)
    finally:
        (root / "dog" / "secret").chmod(0o755)  # so that pytest can remove it
    return proc, root, work / "feats"


def _reasons(summary: dict) -> dict[str, str]:
    return {f["path"]: f["reason"] for f in summary["failed"]}


def test_a_name_that_is_not_utf8_is_extracted_and_stored_losslessly(messy):
    """#16 item 2: `caf\\xe9.png` (or a data root named so) was an internal error (UnicodeEncodeError) after
    all the model work."""
    proc, root, cache = messy
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr
    with FeatureCache.open(cache, create=False) as fc:
        dataset = fc.dataset(MESSY_SHOWN)  # named as people read the folder's name
        names = {fs_path(r.path): dataset.class_names[r.label] for r in dataset.records}
    assert names[f"cat/{NON_UTF8}"] == "cat"  # the very name, byte for byte, under its own class
    assert json.loads(proc.stdout)["dataset"] == MESSY_SHOWN
    assert (root / f"cat/{NON_UTF8}").is_file()


def test_a_fifo_named_like_an_image_is_skipped_not_waited_for(messy):
    """#16 item 3: a FIFO hung `te extract` with no output."""
    proc, _, _ = messy
    reasons = _reasons(json.loads(proc.stdout))
    assert "not a regular file (a FIFO)" in reasons["cat/pipe.png"]


def test_a_decompression_bomb_is_skipped_before_it_is_decoded(messy):
    """#16 item 4: a 12 KB PNG of 10000x10000 pixels decoded to ~300 MB with only a warning."""
    proc, root, _ = messy
    assert (root / "dog" / "bomb.png").stat().st_size < 50_000
    reason = _reasons(json.loads(proc.stdout))["dog/bomb.png"]
    assert "100.0 megapixels" in reason and "TE_MAX_IMAGE_PIXELS" in reason
    assert "DecompressionBombWarning" not in proc.stderr


def test_unreadable_folders_loops_and_links_are_skipped_with_a_reason(messy):
    """#16 item 9: an unreadable folder or a symlink loop was an internal error; a linked class folder
    silently labelled the same images a second time."""
    proc, _, cache = messy
    summary = json.loads(proc.stdout)
    reasons = _reasons(summary)
    assert "Permission" in reasons["dog/secret/"]
    assert "the data root" in reasons["dog/loop"] and "twice" in reasons["dog/loop"]
    assert "cat/" in reasons["kittens"] and "twice" in reasons["kittens"]
    assert "--follow-symlinks" in reasons["cat/outside.png"]
    with FeatureCache.open(cache, create=False) as fc:
        ds = fc.dataset(MESSY_SHOWN)
    assert ds.class_names == ["cat", "dog"]
    assert len(ds.records) == summary["extracted"] == 9  # 5 cats, 4 dogs: each image once
    assert summary["total"] == 11  # the FIFO and the bomb were files te tried, and reports


def test_extract_records_data_as_an_absolute_path(messy):
    """#16 item 8: a relative --data was recorded as typed and broke commands run from elsewhere."""
    proc, root, cache = messy
    assert proc.returncode == 0, proc.stderr
    with FeatureCache.open(cache, create=False) as fc:
        (space,) = fc.spaces()
        assert fc.provenance(space.id)["data"] == str(root.resolve())


def test_follow_symlinks_reads_links_out_of_the_root_and_ends_loops(tmp_path):
    """#16 item 9: links out of --data are followed only when asked, and a loop through them ends."""
    from transfer_engine.data import open_source

    _image(tmp_path / "data" / "cat" / "0.png", 0)
    _image(tmp_path / "photos" / "1.png", 1)
    (tmp_path / "photos" / "again").symlink_to(tmp_path / "photos")  # a loop outside the root
    (tmp_path / "data" / "cat" / "more").symlink_to(tmp_path / "photos")
    default = open_source(str(tmp_path / "data"))
    assert [s.path for s in default.samples()] == ["cat/0.png"]
    assert "--follow-symlinks" in default.skipped()[0]["reason"]
    followed = open_source(str(tmp_path / "data"), follow_symlinks=True)
    assert [s.path for s in followed.samples()] == ["cat/0.png", "cat/more/1.png"]
    assert [(f["path"], "loop" in f["reason"]) for f in followed.skipped()] == [("cat/more/again/", True)]


def test_a_manifest_naming_devices_fifos_and_huge_files_is_bounded(tmp_path, te, good_plugin_site):
    """#16 items 2 and 3: /dev/zero was read until memory ran out; a FIFO blocked; a name in the manifest
    that is not UTF-8 was an internal error."""
    for i, name in enumerate(["0.png", "1.png", NON_UTF8]):
        _image(tmp_path / "img" / name, i)
    os.mkfifo(tmp_path / "pipe.png")
    with open(tmp_path / "huge.png", "wb") as fh:  # sparse: nothing on disk
        fh.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    lines = ["path,label", "img/0.png,a", "img/1.png,b", "/dev/zero,a", "pipe.png,b", "huge.png,a",
             f"img/{NON_UTF8},b"]
    (tmp_path / "m.csv").write_bytes(os.fsencode("\n".join(lines) + "\n"))
    result = te("extract", "--backbone", "tiny_cnn", "--weights", "none", "--backend", "torch", "--data",
                str(tmp_path / "m.csv"), "--cache", str(tmp_path / "feats"), "--json",
                env={**_seeing(good_plugin_site), "OMP_NUM_THREADS": "1"}, timeout=120)
    assert result.code == 0, result.stderr
    summary = json.loads(result.stdout)
    reasons = _reasons(summary)
    assert "a character device" in reasons["/dev/zero"]
    assert "a FIFO" in reasons["pipe.png"]
    assert "over te's limit of 256.0 MiB" in reasons["huge.png"] and "TE_MAX_FILE_BYTES" in reasons["huge.png"]
    assert summary["extracted"] == 3 and len(reasons) == 3


CTRL_C = r"""
import sys
from transfer_engine._prefetch import prefetched

def blocked():
    print("reading", flush=True)  # in the prefetch thread: the consumer waits for its first item
    with open(sys.argv[1], "rb") as fh:  # a FIFO without a writer: blocks as a stale network mount does
        yield fh.read()

try:
    for _ in prefetched(blocked()):
        pass
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_stops_while_the_prefetch_thread_is_blocked_in_a_read(tmp_path):
    """#16 item 3: Ctrl-C did not stop te while its prefetch thread waited on a read (only SIGKILL did)."""
    os.mkfifo(tmp_path / "never")
    proc = subprocess.Popen([sys.executable, "-c", CTRL_C, str(tmp_path / "never")], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "reading"
        time.sleep(0.5)  # into the blocking open(), and the consumer into its wait
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture
def tiny_and_nonconforming(good_plugin_site, nonconforming_site, monkeypatch):
    """The test plugins' backbones (tiny_cnn, wrong_dim_cnn) registered in this process."""
    from transfer_engine.backbones import registry

    monkeypatch.syspath_prepend(str(good_plugin_site))
    monkeypatch.syspath_prepend(str(nonconforming_site))
    registry.reload()
    yield
    registry.reload()


def test_a_backbone_with_the_wrong_feature_size_leaves_no_empty_space(tmp_path, tiny_and_nonconforming, capsys):
    """#16 item 11: a plugin whose model returns another feature size than it declares left an empty
    feature space behind in the cache."""
    from transfer_engine.cli.main import main

    for i in range(3):
        _image(tmp_path / "data" / "a" / f"{i}.png", i)
    code = main(["extract", "--backbone", "wrong_dim_cnn", "--weights", "none", "--backend", "torch",
                 "--data", str(tmp_path / "data"), "--cache", str(tmp_path / "feats"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "internal error" not in err
    assert "wrong_dim_cnn" in err and "te-test-nonconforming" in err and "feature_dim=8" in err
    with FeatureCache.open(tmp_path / "feats", create=False) as fc:
        assert fc.spaces() == []


@pytest.fixture
def exported(tmp_path, tiny_and_nonconforming, monkeypatch):
    """A tiny model extracted with a relative --data and --cache, trained, then exported from another
    folder: (work folder, run, model). The test split holds a file whose name is not UTF-8."""
    from transfer_engine.export import export_onnx
    from transfer_engine.extract import extract
    from transfer_engine.train import train

    work = tmp_path / "work"
    for split, count in (("train", 4), ("val", 2), ("test", 1)):
        for label in ("a", "b"):
            for i in range(count):
                _image(work / "photos" / split / label / f"{i}.png", hash((split, label, i)) % 1000)
    _image(work / "photos" / "test" / "a" / NON_UTF8, 999)
    monkeypatch.chdir(work)
    extract("tiny_cnn", "photos", "feats", weights="none", backend="torch", workers=1, progress=False)
    train("feats", head="linear", out="run", device="cpu", progress=False)
    monkeypatch.chdir(tmp_path)  # elsewhere: the run must not depend on where te extract ran
    model = tmp_path / "m.onnx"
    export_onnx(work / "run", model, check_size=8, batch_sizes=(1,))
    return work, work / "run", model


def test_a_run_from_a_relative_data_path_exports_from_another_folder(exported):
    """#16 item 8: `te export RUN` from another folder failed with "--data data: no such file or folder"."""
    work, run, model = exported
    assert model.is_file()
    assert json.loads((run / "run.json").read_text())["dataset"]["data"] == str((work / "photos").resolve())


def test_a_run_written_with_a_relative_data_path_is_found_beside_its_cache(exported):
    """#16 item 8: a run or cache written before te recorded absolute paths holds --data as typed; te
    looks for it beside the cache instead of failing."""
    from transfer_engine.export.images import held_out_images
    from transfer_engine.runs import Run

    work, run, _ = exported
    info = json.loads((run / "run.json").read_text())
    info["dataset"]["data"] = "photos"  # as an older te wrote it
    (run / "run.json").write_text(json.dumps(info))
    images = held_out_images(Run.open(run), None, 8)
    loaded, _, failed = images.load()
    assert len(loaded) == 3 and failed == []  # the test images (te export's check images), caf\xe9 among them


def test_predict_writes_names_that_are_not_utf8_and_leaves_no_temporary_file(exported, capsys):
    """#16 item 2: `te predict --out x.csv` failed on caf\\xe9.png (UnicodeEncodeError) and left its
    temporary file behind."""
    from transfer_engine.cli.main import main

    work, _, model = exported
    out = work / "out" / "predictions.csv"
    out.parent.mkdir()
    assert main(["predict", str(model), "--data", str(work / "photos" / "test" / "a"), "--out", str(out)]) == 0
    assert "internal error" not in capsys.readouterr().err
    with open(out, newline="", encoding="utf-8") as fh:  # valid UTF-8, names shown as te shows them
        paths = [row["path"] for row in csv.DictReader(fh)]
    assert sorted(paths) == ["0.png", SHOWN]
    assert sorted(p.name for p in out.parent.iterdir()) == ["predictions.csv"]


@pytest.mark.parametrize("setting", ["TE_MAX_IMAGE_PIXELS", "TE_MAX_FILE_BYTES"])
def test_a_bad_limit_is_one_usage_error_not_a_failure_of_every_file(tmp_path, monkeypatch, capsys, setting):
    """#16 items 3 and 4: a limit set to something that is not a number must not turn into every file
    "failing" (read in the decode threads) and an empty data set that looks like success."""
    from transfer_engine.cli.main import main

    _image(tmp_path / "data" / "a" / "0.png", 0)
    monkeypatch.setenv(setting, "abc")
    code = main(["extract", "--backbone", "resnet18", "--weights", "none", "--data", str(tmp_path / "data"),
                 "--cache", str(tmp_path / "feats")])
    err = capsys.readouterr().err
    assert code == 2 and f"{setting}='abc': expected a positive whole number" in err
    assert not (tmp_path / "feats").exists()


def test_every_file_name_has_one_stored_form_that_gives_it_back():
    """#16 item 2: the index holds UTF-8 text; every name a folder can hold (any byte but / and NUL) must be
    stored, read back byte for byte, and never taken for another name (a literal backslash included)."""
    from transfer_engine.core.paths import display_path, stored_path

    names = [os.fsdecode(b"caf" + bytes([b]) + b".png") for b in range(1, 256) if b != ord("/")]
    names += ["caf\\xe9.png", "caf\\udce9.png", "café.png", "日本.png"]
    stored = [stored_path(n) for n in names]
    assert all(s.encode("utf-8") for s in stored)  # the index can hold each one
    assert [fs_path(s) for s in stored] == names and [stored_path(s) for s in stored] == stored
    assert len(set(stored)) == len(names)
    assert display_path(stored_path(NON_UTF8)) == SHOWN and display_path("café.png") == "café.png"


def test_a_file_is_read_whole_without_allocating_the_limit_and_never_past_it(tmp_path, monkeypatch):
    """read_image_file reads what fstat says (reading its 256 MiB limit up front put 256 MiB per reading
    thread on the heap for every image); files whose size fstat cannot tell (/proc) or that grow while
    read are still read to their end, and cut off past the limit."""
    import io
    import tracemalloc

    from transfer_engine.data import files

    exact = tmp_path / "exact.bin"
    exact.write_bytes(b"x" * 1000)
    tracemalloc.start()
    try:
        assert files.read_image_file(exact, limit=1000) == b"x" * 1000  # exactly the limit is allowed
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20
    with pytest.raises(files.FileTooLargeError):
        files.read_image_file(exact, limit=999)
    # fstat says 0 (as for /proc files) or too little (the file grew since): read on, in chunks, bounded
    body = bytes(range(256)) * 9000  # 2.3 MB: more than one 1 MiB chunk
    assert files._read_bounded(io.BytesIO(body), 0, len(body)) == body
    assert files._read_bounded(io.BytesIO(body), 10, len(body)) == body
    with pytest.raises(files.FileTooLargeError):
        files._read_bounded(io.BytesIO(body), 0, len(body) - 1)
