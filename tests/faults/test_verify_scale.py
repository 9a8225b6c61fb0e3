"""`te cache verify` and `repair` stay linear in the data set's size: the check for records whose key has a
row in no space searches each space's primary key instead of scanning every row once per record (that
scan made 60,000 records take 79 s; a million, hours). Checked on the query plan sqlite runs, so the test
needs no timing; the figures per size are in docs/cache.md."""

from __future__ import annotations

import hashlib
import sqlite3

from transfer_engine.cache.index import SCHEMA, Index


def _key(i: int) -> bytes:
    return hashlib.sha256(f"img{i}".encode()).digest()


def _index_with_two_spaces(path) -> Index:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    for digest in ("a", "b"):
        db.execute("INSERT INTO spaces (digest, dim, stored, row_bytes, config, created) VALUES (?, 4, 'int8', 8, '{}', 0)",
                   (digest,))
    db.execute("INSERT INTO datasets (name, class_names, created) VALUES ('photos', '[]', 0)")
    db.executemany("INSERT INTO rows VALUES (1, ?, 1, ?)", [(_key(i), i) for i in range(0, 6)])
    db.executemany("INSERT INTO rows VALUES (2, ?, 2, ?)", [(_key(i), i) for i in range(6, 8)])  # space b only
    db.executemany("INSERT INTO records VALUES (1, ?, ?, ?, 0, 'train')", [(i, f"img{i}.png", _key(i)) for i in range(10)])
    db.commit()
    db.close()
    return Index(path, create=False)


def test_records_without_a_row_in_any_space_are_counted_and_named(tmp_path):
    index = _index_with_two_spaces(tmp_path / "index.sqlite")
    assert index.records_without_row("photos", limit=5) == (2, ["img8.png", "img9.png"])  # 6, 7: in space b
    index.close()


def test_the_check_searches_each_spaces_key_instead_of_scanning_the_rows_per_record(tmp_path):
    index = _index_with_two_spaces(tmp_path / "index.sqlite")
    statements: list[str] = []
    index._conn.set_trace_callback(statements.append)
    index.records_without_row("photos")
    index._conn.set_trace_callback(None)
    checked = [s for s in statements if "NOT EXISTS" in s]
    assert checked
    for statement in checked:
        plan = [row[3] for row in index._conn.execute("EXPLAIN QUERY PLAN " + statement)]
        assert not any(step.startswith(("SCAN w", "SCAN rows")) for step in plan), plan
        assert any(step.startswith("SEARCH w USING PRIMARY KEY (space=? AND key=?)") for step in plan), plan
    index.close()
