"""Per-object storage on APSW: one SQLite file per object, WAL mode.

Every object owns one database file `DATA/objects/<namespace key>/<id>.sqlite`,
named after the id (never a raw name). The file is created by the first write and
opened lazily; reads of an object that never wrote touch nothing.

Writes go into an open transaction (`BEGIN IMMEDIATE` at the first write) that the
object's gate commits at the next non-storage await or at the end of the event
(see `gates.py`): every write made between two non-storage awaits commits as one
SQLite transaction. Storage calls run synchronously on the worker's trio thread,
so no other event of the object can start while one runs (the input gate).

Durability: `full` sets `synchronous=FULL` (the WAL is fsynced at each commit);
`process` sets `synchronous=NORMAL` (survives a process crash, not power loss).

Single writer: the connection runs with `locking_mode=EXCLUSIVE` and takes the
write lock at open, so a second process cannot write (or read) the file while the
owning worker holds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from stateroom import _codec
from stateroom._errors import SqlError

KV_TABLE = "_stateroom_kv"
META_TABLE = "_stateroom_meta"

MAX_KEY_BYTES = 2048
MAX_VALUE_BYTES = 2 * 1024 * 1024
MAX_BATCH = 128


def _key_bytes(key: Any) -> bytes:
    if not isinstance(key, str):
        raise TypeError(f"storage keys must be str, not {type(key).__name__}")
    b = key.encode("utf-8")
    if len(b) > MAX_KEY_BYTES:
        raise ValueError(f"key is {len(b)} bytes; the limit is {MAX_KEY_BYTES} UTF-8 bytes")
    return b


def _value_bytes(value: Any) -> bytes:
    data = _codec.encode(value)
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(
            f"value is {len(data)} bytes encoded; the limit is {MAX_VALUE_BYTES} bytes (2 MiB)"
        )
    return data


class Database:
    """The APSW connection of one object and its open transaction.

    Fields:
      path: the object's file.
      conn: the open connection, or None while closed (never opened or evicted).
      in_txn: True between the first write of a batch and its commit/rollback.
      on_first_write: called when a write opens a new transaction (the gate uses it
        to schedule the commit).
    """

    def __init__(self, path: Path, durability: str, on_first_write: Callable[[], None]) -> None:
        self.path = path
        self.durability = durability
        self.conn: apsw.Connection | None = None
        self.in_txn = False
        self.on_first_write = on_first_write

    # ------------------------------------------------------------- lifecycle

    def exists(self) -> bool:
        return self.conn is not None or self.path.exists()

    def open(self, create: bool) -> apsw.Connection | None:
        if self.conn is not None:
            return self.conn
        if not create and not self.path.exists():
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = apsw.Connection(str(self.path))
        conn.setbusytimeout(0)
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "PRAGMA synchronous=" + ("FULL" if self.durability == "full" else "NORMAL")
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {KV_TABLE}(key BLOB PRIMARY KEY, value BLOB NOT NULL)"
            " WITHOUT ROWID"
        )
        self.conn = conn
        return conn

    def close(self) -> None:
        if self.conn is not None:
            if self.in_txn:
                self.rollback()
            self.conn.close()
            self.conn = None

    # ------------------------------------------------------------- transactions

    def write_conn(self) -> apsw.Connection:
        conn = self.open(create=True)
        assert conn is not None
        if not self.in_txn:
            conn.execute("BEGIN IMMEDIATE")
            self.in_txn = True
            self.on_first_write()
        return conn

    def commit(self) -> None:
        """Commit the open transaction (fsynced under `full`). Raises on failure."""
        if self.in_txn:
            assert self.conn is not None
            self.in_txn = False
            try:
                self.conn.execute("COMMIT")
            except apsw.Error:
                if not self.conn.getautocommit():
                    self.conn.execute("ROLLBACK")
                raise

    def rollback(self) -> None:
        if self.in_txn and self.conn is not None:
            self.in_txn = False
            if not self.conn.getautocommit():
                self.conn.execute("ROLLBACK")

    # ------------------------------------------------------------- KV

    def kv_get(self, key: str) -> Any:
        kb = _key_bytes(key)
        conn = self.open(create=False)
        if conn is None:
            return None
        for (v,) in conn.execute(f"SELECT value FROM {KV_TABLE} WHERE key=?", (kb,)):
            return _codec.decode(v)
        return None

    def kv_get_many(self, keys: list[str]) -> dict[str, Any]:
        if len(keys) > MAX_BATCH:
            raise ValueError(f"get() of {len(keys)} keys; the limit is {MAX_BATCH} keys per call")
        kbs = sorted({_key_bytes(k) for k in keys})
        conn = self.open(create=False)
        if conn is None:
            return {}
        out = {}
        for kb in kbs:
            for (v,) in conn.execute(f"SELECT value FROM {KV_TABLE} WHERE key=?", (kb,)):
                out[kb.decode("utf-8")] = _codec.decode(v)
        return out

    def kv_put_many(self, entries: dict[str, Any]) -> None:
        if len(entries) > MAX_BATCH:
            raise ValueError(
                f"put() of {len(entries)} entries; the limit is {MAX_BATCH} keys per call"
            )
        # Encode everything first: a bad key or value writes nothing.
        rows = [(_key_bytes(k), _value_bytes(v)) for k, v in entries.items()]
        conn = self.write_conn()
        conn.executemany(f"INSERT OR REPLACE INTO {KV_TABLE}(key, value) VALUES(?, ?)", rows)

    def kv_delete_many(self, keys: list[str]) -> int:
        if len(keys) > MAX_BATCH:
            raise ValueError(
                f"delete() of {len(keys)} keys; the limit is {MAX_BATCH} keys per call"
            )
        kbs = [_key_bytes(k) for k in keys]
        if self.open(create=False) is None:
            return 0
        conn = self.write_conn()
        n = 0
        for kb in set(kbs):
            conn.execute(f"DELETE FROM {KV_TABLE} WHERE key=?", (kb,))
            n += conn.changes()
        return n

    def kv_list(
        self,
        *,
        start: str | None = None,
        start_after: str | None = None,
        end: str | None = None,
        prefix: str | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> dict[str, Any]:
        if limit is not None and (not isinstance(limit, int) or limit <= 0):
            raise ValueError("list() limit must be a positive integer")
        if start is not None and start_after is not None:
            raise ValueError("list() takes start or start_after, not both")
        conn = self.open(create=False)
        if conn is None:
            return {}
        where, args = [], []
        if start is not None:
            where.append("key >= ?")
            args.append(_key_bytes(start))
        if start_after is not None:
            where.append("key > ?")
            args.append(_key_bytes(start_after))
        if end is not None:
            where.append("key < ?")
            args.append(_key_bytes(end))
        if prefix is not None:
            pb = _key_bytes(prefix)
            where.append("substr(key, 1, ?) = ?")
            args.extend([len(pb), pb])
        sql = f"SELECT key, value FROM {KV_TABLE}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY key " + ("DESC" if reverse else "ASC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return {k.decode("utf-8"): _codec.decode(v) for k, v in conn.execute(sql, args)}

    def delete_all(self) -> None:
        """Drop every KV entry and SQL table; the file is removed at close."""
        conn = self.open(create=False)
        if conn is None:
            return
        conn = self.write_conn()
        conn.execute(f"DELETE FROM {KV_TABLE}")
        tables = [
            (t, n)
            for t, n in conn.execute(
                "SELECT type, name FROM sqlite_master WHERE type IN ('table','view')"
                " AND name NOT LIKE 'sqlite_%'"
            )
            if n != KV_TABLE
        ]
        for t, n in tables:
            conn.execute(f'DROP {"VIEW" if t == "view" else "TABLE"} IF EXISTS "{n}"')

    def is_empty(self) -> bool:
        conn = self.open(create=False)
        if conn is None:
            return True
        for (n,) in conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND name != ?",
            (KV_TABLE,),
        ):
            if n:
                return False
        for _ in conn.execute(f"SELECT 1 FROM {KV_TABLE} LIMIT 1"):
            return False
        return True

    def remove_files(self) -> None:
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            try:
                os.unlink(str(self.path) + suffix)
            except FileNotFoundError:
                pass

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(str(self.path) + suffix)
            except FileNotFoundError:
                pass
        return total


def sql_error(exc: apsw.Error) -> SqlError:
    code = getattr(exc, "result", None)
    return SqlError(str(exc), code)
