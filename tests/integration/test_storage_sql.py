"""SQL storage end to end (SPEC §5): cursor, several statements, refusals, limits."""

import pytest

from stateroom import SqlError
from tests.conftest import APPS

APP = str(APPS / "storage" / "stateroom.toml")
pytestmark = pytest.mark.stateroom(config=APP, workers=2)


def store(rt, name):
    return rt.namespace("STORE").get_by_name(name)


async def test_cursor_gives_rows_columns_and_counts(stateroom_runtime):
    s = store(stateroom_runtime, "cursor")
    created = await s.sql(
        "CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, data BLOB);"
        "CREATE INDEX users_name ON users(name);"
        "INSERT INTO users(name, data) VALUES ('ann', x'00ff'), ('bob', NULL), ('cy', x'01')"
    )
    assert created["written"] == 3
    out = await s.sql("SELECT id, name, data FROM users ORDER BY id")
    assert out["columns"] == ["id", "name", "data"]
    assert out["rows"] == [
        {"id": 1, "name": "ann", "data": b"\x00\xff"},
        {"id": 2, "name": "bob", "data": None},
        {"id": 3, "name": "cy", "data": b"\x01"},
    ]
    assert out["read"] >= 3 and out["written"] == 0
    # Column names are known for an empty result too.
    empty = await s.sql("SELECT id, name FROM users WHERE id > ?", 100)
    assert empty == {"columns": ["id", "name"], "rows": [], "read": empty["read"], "written": 0}
    assert await s.sql_raw("SELECT name, id FROM users WHERE id < 3 ORDER BY id") == [
        ("ann", 1),
        ("bob", 2),
    ]
    assert await s.sql_one("SELECT count(*) AS n FROM users") == {"n": 3}
    with pytest.raises(SqlError, match="exactly one row"):
        await s.sql_one("SELECT * FROM users")
    with pytest.raises(SqlError, match="exactly one row"):
        await s.sql_one("SELECT * FROM users WHERE id = 99")
    updated = await s.sql("UPDATE users SET name = upper(name) WHERE id >= ?", 2)
    assert updated["written"] == 2
    # A full scan reads every row even when it returns one.
    scan = await s.sql("SELECT count(*) AS n FROM users WHERE data IS NULL")
    assert scan["rows"] == [{"n": 1}] and scan["read"] >= 3
    # An indexed lookup reads about the rows it returns.
    indexed = await s.sql("SELECT id FROM users WHERE name = 'ann'")
    assert indexed["rows"] == [{"id": 1}] and indexed["read"] <= 2
    assert await s.database_size() > 0
    master = await s.sql(
        "SELECT type, name FROM sqlite_master WHERE name LIKE 'users%' ORDER BY name"
    )
    assert master["rows"] == [
        {"type": "table", "name": "users"},
        {"type": "index", "name": "users_name"},
    ]
    info = await s.sql("PRAGMA table_info(users)")
    assert [r["name"] for r in info["rows"]] == ["id", "name", "data"]
    assert (await s.sql("PRAGMA user_version"))["rows"] == [{"user_version": 0}]


async def test_several_statements_bind_the_last_and_return_its_rows(stateroom_runtime):
    s = store(stateroom_runtime, "multi")
    out = await s.sql(
        "CREATE TABLE t(a, b); INSERT INTO t VALUES (1, 'x'); -- a comment; with a semicolon\n"
        "INSERT INTO t VALUES (2, 'y;z'); SELECT a, b FROM t WHERE a >= ? ORDER BY a;",
        1,
    )
    assert out["rows"] == [{"a": 1, "b": "x"}, {"a": 2, "b": "y;z"}]
    assert out["written"] == 2
    # A trigger body holds semicolons of its own.
    await s.sql(
        "CREATE TABLE log(msg); CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN"
        " INSERT INTO log VALUES ('one'); INSERT INTO log VALUES ('two'); END;"
        "INSERT INTO t VALUES (?, 'w')",
        3,
    )
    assert (await s.sql("SELECT count(*) AS n FROM log"))["rows"] == [{"n": 2}]
    # Writes take effect even when the cursor is never read.
    await s.sql_raw("INSERT INTO t VALUES (4, 'v')")
    assert (await s.sql("SELECT count(*) AS n FROM t"))["rows"] == [{"n": 4}]


REFUSED = [
    "BEGIN",
    "BEGIN IMMEDIATE",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT sp",
    "RELEASE sp",
    "ATTACH DATABASE 'other.db' AS other",
    "DETACH DATABASE main",
    "VACUUM INTO '/tmp/stateroom-vacuum-into.db'",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA synchronous = OFF",
    "PRAGMA writable_schema = 1",
    "PRAGMA user_version = 7",
    "PRAGMA locking_mode = NORMAL",
    "SELECT load_extension('libevil')",
    "SELECT * FROM _stateroom_kv",
    "DELETE FROM _stateroom_kv",
    "INSERT INTO _stateroom_kv VALUES (x'00', x'00')",
    "DROP TABLE _stateroom_kv",
    "CREATE TABLE _stateroom_mine(x)",
    "CREATE INDEX evil ON _stateroom_kv(value)",
    "CREATE VIEW peek AS SELECT * FROM _STATEROOM_KV",
    "PRAGMA table_info(_stateroom_kv)",
]


async def test_refused_statements_change_nothing(stateroom_runtime):
    s = store(stateroom_runtime, "refusals")
    await s.call("put", "kept", 1)
    await s.sql("CREATE TABLE t(a)")
    for statement in REFUSED:
        with pytest.raises(SqlError, match="not authorized") as info:
            await s.sql(f"INSERT INTO t VALUES (1); {statement}")
        assert info.value.sqlite_code == 23, f"{statement}: code {info.value.sqlite_code}"
        with pytest.raises(SqlError, match="not authorized"):
            await s.sql(statement)
        # The earlier statement of the refused call was not applied either.
        count = (await s.sql("SELECT count(*) AS n FROM t"))["rows"]
        assert count == [{"n": 0}], f"after refusing {statement!r}: {count}"
    assert await s.call("list") == {"kept": 1}
    names = await s.sql("SELECT name FROM sqlite_master ORDER BY name")
    assert {"t"} <= {r["name"] for r in names["rows"]}
    assert "peek" not in {r["name"] for r in names["rows"]}


async def test_failing_statement_leaves_the_whole_call_unapplied(stateroom_runtime):
    s = store(stateroom_runtime, "atomic-exec")
    await s.sql("CREATE TABLE t(a UNIQUE)")
    with pytest.raises(SqlError, match="UNIQUE") as info:
        await s.sql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (2); INSERT INTO t VALUES (1)")
    assert info.value.sqlite_code is not None
    assert (await s.sql("SELECT count(*) AS n FROM t"))["rows"] == [{"n": 0}]
    with pytest.raises(SqlError, match="no such table"):
        await s.sql("SELECT * FROM nope")
    with pytest.raises(SqlError):
        await s.sql("SELEC 1")
    await s.sql("INSERT INTO t VALUES (1)")
    assert (await s.sql("SELECT count(*) AS n FROM t"))["rows"] == [{"n": 1}]


async def test_sql_limits_name_the_limit_and_write_nothing(stateroom_runtime):
    s = store(stateroom_runtime, "sql-limits")
    await s.sql("CREATE TABLE t(a, b)")
    long_sql = "INSERT INTO t VALUES (1, '" + "x" * 100_000 + "')"
    with pytest.raises(SqlError, match="100,000"):
        await s.sql(long_sql)
    params = ",".join("?" * 101)
    with pytest.raises(SqlError, match="100"):
        await s.sql(f"SELECT {params}", *range(101))
    # 100 bound parameters are fine.
    assert len((await s.sql_raw(f"SELECT {','.join('?' * 100)}", *range(100)))[0]) == 100
    with pytest.raises(SqlError, match="2 MiB"):
        await s.sql("INSERT INTO t VALUES (?, 1)", b"x" * (2 * 1024 * 1024 + 1))
    with pytest.raises(SqlError, match="2 MiB"):
        await s.sql("INSERT INTO t VALUES (1, 2); INSERT INTO t VALUES (randomblob(3000000), 1)")
    await s.sql("INSERT INTO t VALUES (?, 1)", b"x" * (1024 * 1024))
    assert (await s.sql("SELECT count(*) AS n FROM t"))["rows"] == [{"n": 1}]


@pytest.mark.stateroom(config=APP, workers=1, max_db_bytes=400_000)
async def test_database_size_limit_is_enforced_and_writes_nothing(stateroom_runtime):
    s = store(stateroom_runtime, "full")
    await s.sql("CREATE TABLE t(a)")
    with pytest.raises(SqlError, match="max-db-bytes"):
        await s.sql("INSERT INTO t VALUES (1); INSERT INTO t VALUES (randomblob(600000))")
    with pytest.raises(ValueError, match="max-db-bytes"):
        await s.call("put", {"a": 1, "b": b"x" * 500_000})
    assert await s.call("list") == {}
    assert (await s.sql("SELECT count(*) AS n FROM t"))["rows"] == [{"n": 0}]
    # Small writes still work.
    await s.call("put", "a", 1)
    assert await s.call("get", "a") == 1
