"""#35 item 10: manifests that te read wrongly or failed on with an internal error. A CSV field over csv's
131,072-character limit, a UTF-8 BOM, JSON labels that are not text or integers, a NUL in a label, a
million-character path echoed whole, and paths that leave the manifest's folder without a word."""

from __future__ import annotations

import json

import pytest

from transfer_engine.cli.main import main
from transfer_engine.data.sources import open_source
from transfer_engine.errors import UsageError


def _refused(path) -> str:
    with pytest.raises(UsageError) as caught:
        open_source(str(path))
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_a_field_over_csvs_limit_is_one_line_naming_the_line(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("path,label\nok.png,cat\n" + "a" * 200_000 + ".png,dog\n")
    message = _refused(m)
    assert "line 3" in message and "131,072 characters" in message


def test_a_bom_before_the_header_is_not_part_of_the_path_column(tmp_path):
    (tmp_path / "m.csv").write_text("\ufeffpath,label\na.png,cat\n", encoding="utf-8")
    (tmp_path / "m.jsonl").write_text('\ufeff{"path": "a.png", "label": "cat"}\n', encoding="utf-8")
    for name in ("m.csv", "m.jsonl"):
        assert open_source(str(tmp_path / name)).class_names == ["cat"]


@pytest.mark.parametrize("label, kind", [([1, 2], "list"), ({"x": 1}, "object"), (True, "boolean"),
                                         (1.5, "fraction")])
def test_json_labels_that_are_not_text_or_integers_are_refused(tmp_path, label, kind):
    m = tmp_path / "m.jsonl"
    rows = [{"path": "a.png", "label": "cat"}, {"path": "b.png", "label": label}]
    m.write_text("".join(json.dumps(row) + "\n" for row in rows))
    message = _refused(m)
    assert "line 2" in message and kind in message


def test_integer_labels_still_sort_as_numbers(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": "a.png", "label": 10}\n{"path": "b.png", "label": 2}\n')
    assert open_source(str(m)).class_names == ["2", "10"]


def test_a_nul_or_line_break_in_a_label_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text('path,label\na.png,"c\x00t"\n')
    assert "line 2" in _refused(tmp_path / "m.csv") and "control character" in _refused(tmp_path / "m.csv")
    (tmp_path / "m.jsonl").write_text('{"path": "a.png", "label": "two\\nlines"}\n')
    assert "control character" in _refused(tmp_path / "m.jsonl")


def test_a_million_character_path_is_cut_in_the_error(tmp_path):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"path": "p" * 1_000_000}) + "\n")
    message = _refused(m)
    assert "has no label" in message and "1,000,000 characters" in message


def test_paths_outside_the_manifests_folder_are_read_with_a_warning(tmp_path, capsys):
    """Absolute and ../ paths are an ordinary manifest form (read as written, as docs/extract.md says), but
    te says so once, naming the count and the first line."""
    (tmp_path / "inside.csv").write_text("path,label\nimg/a.png,cat\n./b.png,dog\n")
    open_source(str(tmp_path / "inside.csv"))
    assert capsys.readouterr().err == ""
    (tmp_path / "m.csv").write_text("path,label\nimg/a.png,cat\n/srv/photos/b.png,dog\n../c.png,dog\n"
                                    "img/../d.png,cat\n")
    src = open_source(str(tmp_path / "m.csv"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("te: warning: ") and "2 path(s)" in err[0], err
    assert "line 3: /srv/photos/b.png" in err[0]
    assert src.paths_outside == 2 and [s.path for s in src.samples()][1] == "/srv/photos/b.png"


def test_the_cli_says_one_line_and_exits_2(tmp_path, capsys):
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": "a.png", "label": [1, 2]}\n')
    code = main(["extract", "--backbone", "mobilenet_v3_small", "--weights", "none", "--data", str(m),
                 "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("te: error: ") and "JSON list" in err[0], err
