"""te's durable writes (runs, reports, predictions, leaderboards, the cache's own files) land only in a file
they created: a symlink planted where the temporary file would go, or at the target itself, never makes te
write through it; and the written file has the permissions a plain write gives, not a temp file's 0600."""

from __future__ import annotations

import os
import stat

from transfer_engine._durable import write_durably, write_text_durably


def test_a_symlink_planted_at_the_old_predictable_temp_name_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / f".pred.csv.tmp-{os.getpid()}").symlink_to(victim)  # the name te used to write through
    write_text_durably(shared / "pred.csv", "path,label\n")
    assert victim.read_text() == "precious"
    assert (shared / "pred.csv").read_text() == "path,label\n"


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "pred.csv").symlink_to(victim)
    write_text_durably(tmp_path / "pred.csv", "path,label\n")
    assert victim.read_text() == "precious"
    assert not (tmp_path / "pred.csv").is_symlink() and (tmp_path / "pred.csv").read_text() == "path,label\n"


def test_written_files_get_the_usual_permissions_and_no_temp_file_stays(tmp_path):
    old = os.umask(0o022)
    try:
        write_durably(tmp_path / "head.safetensors", lambda p: p.write_bytes(b"\0" * 8))
        write_text_durably(tmp_path / "run.json", "{}")
    finally:
        os.umask(old)
    for name in ("head.safetensors", "run.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["head.safetensors", "run.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    (tmp_path / "run.json").write_text("old")

    def fail(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    try:
        write_durably(tmp_path / "run.json", fail)
    except OSError:
        pass
    assert (tmp_path / "run.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_writer_that_brings_its_own_0600_file_still_gives_the_usual_permissions(tmp_path):
    from safetensors.torch import save_file
    import torch

    old = os.umask(0o022)
    try:  # safetensors renames its own 0600 temporary file into place (te finetune's best.safetensors)
        write_durably(tmp_path / "best.safetensors", lambda p: save_file({"w": torch.zeros(2)}, str(p)))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "best.safetensors").stat().st_mode) == 0o644
