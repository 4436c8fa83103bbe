"""Unit tests of the storage layer without processes: Database, SQL policy, WAL history."""

from __future__ import annotations

import shutil
from pathlib import Path

import apsw
import pytest

from stateroom import SqlError
from stateroom.worker import pitr
from stateroom.worker.pitr import History, parse_bookmark
from stateroom.worker.sqlpolicy import Policy
from stateroom.worker.storage import Database, StorageLockedError, prefix_end, split_statements


def open_db(path: Path, retention_s: float = 3600) -> Database:
    history = History(path, retention_s=retention_s, durability="full")
    return Database(path, "full", lambda: None, history=history)


def restore(db: Database, bookmark: str) -> None:
    """What `Pitr.before_open` does: rebuild the image and copy it in as one commit."""
    _, segment, frames = db.history.check(bookmark)
    image = db.path.with_name("image.sqlite")
    db.history.build_image(segment, frames, image)
    source = apsw.Connection(str(image))
    try:
        db.replace_with(source)
    finally:
        source.close()
        image.unlink()


def test_statements_split_with_sqlites_tokenizer():
    assert split_statements("SELECT 1") == ["SELECT 1"]
    assert split_statements("SELECT 1;") == ["SELECT 1;"]
    assert split_statements("SELECT 1; SELECT ';'; -- x;\n SELECT 3") == [
        "SELECT 1;",
        " SELECT ';';",
        " -- x;\n SELECT 3",
    ]
    trigger = "CREATE TRIGGER t AFTER INSERT ON x BEGIN SELECT 1; SELECT 2; END;"
    assert split_statements(trigger + " SELECT 4") == [trigger, " SELECT 4"]
    assert split_statements("SELECT 1; ;  ; -- only a comment") == ["SELECT 1;"]


def test_prefix_end_is_the_smallest_key_past_every_key_with_the_prefix():
    assert prefix_end(b"ab") == b"ac"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") is None


def test_policy_refuses_only_user_sql():
    policy = Policy()
    assert policy.authorize(apsw.SQLITE_TRANSACTION, "BEGIN", None, None, None) == apsw.SQLITE_OK
    policy.user = True
    deny = apsw.SQLITE_DENY
    assert policy.authorize(apsw.SQLITE_TRANSACTION, "BEGIN", None, None, None) == deny
    assert policy.authorize(apsw.SQLITE_READ, "_Stateroom_kv", "key", "main", None) == deny
    assert policy.authorize(apsw.SQLITE_READ, "users", "_stateroom_col", "main", None) == 0
    assert policy.authorize(apsw.SQLITE_PRAGMA, "user_version", None, None, None) == 0
    assert policy.authorize(apsw.SQLITE_PRAGMA, "user_version", "3", None, None) == deny
    assert policy.authorize(apsw.SQLITE_PRAGMA, "table_info", "users", None, None) == 0
    assert policy.authorize(apsw.SQLITE_FUNCTION, None, "load_extension", None, None) == deny
    assert policy.authorize(apsw.SQLITE_FUNCTION, None, "upper", None, None) == 0


def test_a_second_database_on_the_same_file_is_locked_out(tmp_path):
    path = tmp_path / "obj.sqlite"
    owner = open_db(path)
    owner.kv_put_many({"a": 1})
    owner.commit()
    intruder = open_db(path)
    with pytest.raises(StorageLockedError) as info:
        intruder.kv_get("a")
    assert info.value.retryable
    owner.close()
    assert intruder.kv_get("a") == 1
    intruder.close()


def test_writes_of_a_failed_exec_are_rolled_back_but_earlier_ones_stay(tmp_path):
    db = open_db(tmp_path / "obj.sqlite")
    db.sql_exec("CREATE TABLE t(a UNIQUE)", ())
    db.kv_put_many({"k": 1})
    with pytest.raises(SqlError):
        db.sql_exec("INSERT INTO t VALUES (1); INSERT INTO t VALUES (1)", ())
    assert db.sql_exec("SELECT count(*) FROM t", ())[1] == [(0,)]
    assert db.kv_get("k") == 1
    assert db.in_txn
    db.commit()
    db.close()


def test_pitr_restores_across_archived_segments_and_after_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(pitr, "ARCHIVE_FRAMES", 4)  # archive every few commits
    path = tmp_path / "obj.sqlite"
    db = open_db(path)
    marks = []
    for i in range(12):
        db.kv_put_many({"i": i, f"k{i}": "x" * 3000})
        db.commit()
        marks.append(db.history.current())
    assert len(db.history.segments()) >= 2
    assert marks == sorted(marks)
    restore(db, marks[3])
    assert db.kv_get("i") == 3 and db.kv_get("k4") is None
    after_restore = db.history.current()
    restore(db, marks[11])
    assert db.kv_get("i") == 11
    restore(db, after_restore)
    assert db.kv_get("i") == 3

    # A crash: the files as a dying process leaves them (WAL not archived).
    db.kv_put_many({"i": "crash"})
    db.commit()
    last = db.history.current()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for f in tmp_path.iterdir():
        if f.name.startswith("obj."):
            if f.is_dir():
                shutil.copytree(f, crashed / f.name)
            else:
                shutil.copy(f, crashed / f.name)
    db.close()
    again = open_db(crashed / "obj.sqlite")
    assert again.kv_get("i") == "crash"
    restore(again, marks[5])
    assert again.kv_get("i") == 5
    restore(again, last)
    assert again.kv_get("i") == "crash"
    again.close()


def test_pitr_forgets_history_older_than_the_retention_window(tmp_path, monkeypatch):
    monkeypatch.setattr(pitr, "ARCHIVE_FRAMES", 2)
    path = tmp_path / "obj.sqlite"
    db = open_db(path, retention_s=3600)
    db.kv_put_many({"v": "old"})
    db.commit()
    old = db.history.current()
    # Move the clock forward two hours: every archived segment leaves the window.
    real = pitr.now_ms
    monkeypatch.setattr(pitr, "now_ms", lambda: real() + 2 * 3600 * 1000)
    marks = []
    for i in range(6):
        db.kv_put_many({"v": i})
        db.commit()
        marks.append(db.history.current())
    recent = marks[-1]
    assert db.history.base() is not None, "old segments were folded into the base"
    with pytest.raises(ValueError, match="window"):
        db.history.check(old)
    with pytest.raises(ValueError, match="window"):
        db.history.for_time(real())
    restore(db, recent)
    assert db.kv_get("v") == 5
    # The base image plus the retained segments rebuild every state in the window.
    restore(db, marks[1])
    assert db.kv_get("v") == 1
    db.close()


def test_bookmarks_parse_and_reject_garbage():
    assert parse_bookmark("00000000000a-00000002-00000003") == (10, 2, 3)
    for bad in ["", "x", "00000000000a-00000002", "00000000000A-00000002-00000003"]:
        with pytest.raises(ValueError):
            parse_bookmark(bad)
    with pytest.raises(TypeError):
        parse_bookmark(5)


def test_statements_seen_before_still_count_scans_and_name_columns(tmp_path):
    db = open_db(tmp_path / "obj.sqlite")
    db.sql_exec("CREATE TABLE t(a, b); CREATE INDEX t_a ON t(a)", ())
    for i in range(50):
        db.sql_exec("INSERT INTO t VALUES (?, ?)", (i, "x"))
    lookup = "SELECT b FROM t WHERE a = ?"
    for _ in range(3):  # the first run learns the statement, later runs take the fast path
        columns, rows, read, written = db.sql_exec(lookup, (7,))
        assert (columns, rows, written) == (["b"], [("x",)], 0)
        assert read == 1
        assert db.sql_exec(lookup, (-1,))[:2] == (["b"], [])
    db.sql_exec("DROP INDEX t_a", ())
    # Without the index the same text scans the table: the scan is counted.
    columns, rows, read, _ = db.sql_exec(lookup, (7,))
    assert rows == [("x",)] and read >= 50
    db.sql_exec("SELECT * FROM t WHERE a < 0", ())
    assert db.sql_exec("SELECT * FROM t WHERE a < 0", ())[0] == ["a", "b"]
    db.sql_exec("ALTER TABLE t ADD COLUMN c", ())
    assert db.sql_exec("SELECT * FROM t WHERE a < 0", ())[0] == ["a", "b", "c"]
    db.commit()
    db.close()


def test_statements_seen_before_count_writes_fail_cleanly_and_survive_a_reopen(tmp_path):
    db = open_db(tmp_path / "obj.sqlite")
    db.sql_exec(
        "CREATE TABLE t(a UNIQUE, b); CREATE TABLE log(a);"
        " CREATE TRIGGER t_log AFTER INSERT ON t BEGIN INSERT INTO log VALUES (new.a); END",
        (),
    )
    insert = "INSERT INTO t VALUES (?, ?)"
    for i in range(3):  # the first run learns the statement, later runs take the fast path
        _, rows, read, written = db.sql_exec(insert, (i, "x"))
        assert (rows, read, written) == ([], 0, 2), f"run {i}: the row and its trigger's row"
    # A failing run on the fast path raises, writes nothing, and the next run works.
    with pytest.raises(SqlError, match="UNIQUE"):
        db.sql_exec(insert, (1, "again"))
    assert db.sql_exec(insert, (3, "x"))[3] == 2
    assert db.sql_exec("SELECT count(*) FROM log", ())[1] == [(4,)]
    # Limits hold for a known statement too.
    with pytest.raises(SqlError, match="the limit is 100"):
        db.sql_exec(insert, tuple(range(101)))
    db.commit()
    # A new connection (evicted, then used again): the statement runs on it, learnt again.
    db.close()
    for i in (4, 5):
        assert db.sql_exec(insert, (i, "y"))[3] == 2
    assert db.sql_exec("SELECT a FROM t WHERE b = ?", ("y",))[1] == [(4,), (5,)]
    db.commit()
    db.close()


def test_pitr_keeps_a_small_wal_across_close_and_open(tmp_path):
    path = tmp_path / "obj.sqlite"
    marks = []
    for i in range(3):
        db = open_db(path)
        db.open(create=True)
        db.kv_put_many({"i": i})
        db.commit()
        marks.append(db.history.current())
        db.close()
        assert db.history.segments() == [], f"session {i}: the small WAL was archived at close"
        assert Path(str(path) + "-wal").stat().st_size > 0, f"session {i}: no WAL left in place"
    assert marks == sorted(marks) and len(set(marks)) == 3
    db = open_db(path)
    db.open(create=True)
    assert db.history.current() == marks[-1], "the reopened WAL's labels are the live segment's"
    assert db.kv_get("i") == 2
    restore(db, marks[0])
    assert db.kv_get("i") == 0
    restore(db, marks[2])
    assert db.kv_get("i") == 2
    db.close()


def test_pitr_archives_a_wal_whose_last_commit_has_no_label(tmp_path):
    path = tmp_path / "obj.sqlite"
    db = open_db(path)
    db.open(create=True)
    db.kv_put_many({"i": 1})
    db.commit()
    first = db.history.current()
    db.kv_put_many({"i": 2})
    db.commit()
    db.close()
    # A crash between a commit and its label: the label file lacks the last commit
    # (its place still holds the zeros written ahead of the labels).
    log = db.history.dir / f"{db.history.segment:010d}.log"
    data = bytearray(log.read_bytes())
    last = (len(db.history._read_label_file(db.history.segment)) - 1) * pitr.LABEL.size
    data[last : last + pitr.LABEL.size] = bytes(pitr.LABEL.size)
    log.write_bytes(bytes(data))
    again = open_db(path)
    again.open(create=True)
    assert again.history.segments() == [0], "the WAL was archived at open as segment 0"
    assert again.kv_get("i") == 2
    restore(again, first)
    assert again.kv_get("i") == 1
    again.close()


def test_pitr_restarts_the_wal_in_place_and_keeps_history_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(pitr, "ARCHIVE_FRAMES", 6)
    path = tmp_path / "obj.sqlite"
    wal = Path(str(path) + "-wal")
    db = open_db(path)
    db.open(create=True)
    marks = []
    for i in range(8):
        db.kv_put_many({"i": i})
        db.commit()
        marks.append(db.history.current())
    assert db.history.segments() == [0]
    size = wal.stat().st_size
    # The archive restarted the WAL: its later commits overwrote the old frames in
    # place and the file never shrank (a shrunk WAL makes every commit grow it again).
    assert size >= pitr.WAL_HEADER + 6 * (pitr.FRAME_HEADER + 4096)
    live = pitr.WAL_HEADER + db.history._frames * (pitr.FRAME_HEADER + 4096)
    db.close()
    assert wal.stat().st_size == live, "a kept WAL is cut to its live frames at close"
    assert size > live

    # Reopened: the two commits after the archive are the live segment, the old
    # generation's frames behind them are not taken for commits.
    db = open_db(path)
    db.open(create=True)
    assert db.history.segments() == [0], "the kept WAL was archived again at open"
    assert db.history.current() == marks[-1]
    assert db.kv_get("i") == 7
    for m, want in ((marks[2], 2), (marks[6], 6), (marks[7], 7)):
        restore(db, m)
        assert db.kv_get("i") == want

    # A crash right after an archive's checkpoint, before any commit: the WAL still
    # holds exactly the segment just archived. The next open must not archive it
    # again (that would add a second copy of those commits, labelled later).
    for i in range(20):
        db.kv_put_many({"j": i})
        db.commit()
        if db.history._frames == 0:
            break
    assert db.history._frames == 0, "no archive happened"
    segments = db.history.segments()
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for f in tmp_path.iterdir():
        if f.name.startswith("obj."):
            (shutil.copytree if f.is_dir() else shutil.copy)(f, crashed / f.name)
    db.close()
    again = open_db(crashed / "obj.sqlite")
    again.open(create=True)
    assert again.history.segments() == segments
    assert again.kv_get("j") == i
    again.close()
    assert not Path(str(crashed / "obj.sqlite") + "-wal").exists()


def test_pitr_archives_without_copy_file_range(tmp_path, monkeypatch):
    # Where the kernel cannot copy between the files (an old kernel, some file
    # systems), the segment is copied through the process instead, byte for byte.
    monkeypatch.setattr(pitr, "ARCHIVE_FRAMES", 3)

    def unsupported(*_args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(pitr.os, "copy_file_range", unsupported)
    path = tmp_path / "obj.sqlite"
    db = open_db(path)
    db.open(create=True)
    marks = []
    for i in range(7):
        db.kv_put_many({"i": i, "pad": "y" * 2000})
        db.commit()
        marks.append(db.history.current())
    assert len(db.history.segments()) >= 2
    for s in db.history.segments():
        seg = db.history.dir / f"{s:010d}.wal"
        assert (seg.stat().st_size - pitr.WAL_HEADER) % (pitr.FRAME_HEADER + 4096) == 0
    for i in (0, 2, 4, 6):
        restore(db, marks[i])
        assert db.kv_get("i") == i
    db.close()
