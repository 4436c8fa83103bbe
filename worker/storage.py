"""Per-object storage on APSW: one SQLite file per object, WAL mode, one writer.

Every object owns one database file `DATA/objects/<namespace key>/<id>.sqlite`,
named after the id (never a raw name). KV data lives in the reserved table
`_stateroom_kv` (keys as UTF-8 bytes, so SQLite's memcmp order is UTF-8 byte order),
runtime state (the alarm) in `_stateroom_meta`; user SQL sees everything else. The
file is created by the first write and opened lazily: KV reads of an object that
never wrote open nothing, and an object that holds no data and no alarm leaves no
file (nor history) once evicted.

Transactions: the first write opens a transaction (`BEGIN IMMEDIATE`) and calls
`on_first_write` so the object's gate schedules the commit (`catalog.py`): every
write made between two non-storage awaits commits as one SQLite transaction. Calls
here are synchronous on the worker's trio thread, which is what keeps the input gate
closed while a storage operation runs. A call that fails leaves nothing of itself
behind: multi-row writes run inside a savepoint that is rolled back on error. If
SQLite itself rolls back the whole transaction (it may on SQLITE_FULL), the writes of
the turn are lost and `on_txn_lost` resets the object.

Durability: `full` sets `synchronous=FULL` (the WAL is fsynced at each commit:
survives power loss); `process` sets `synchronous=NORMAL` (survives any process
crash, not an OS crash).

Single writer, fenced: the connection runs with `locking_mode=EXCLUSIVE` and takes
the write lock at open (`BEGIN IMMEDIATE; COMMIT`), which it then never releases, so
no other process can read or write the file while the owning worker lives; the OS
drops the lock when that process dies. Opening a file locked by another process
raises `StorageLockedError` (retryable).

Limits (SPEC §5), enforced before anything is written or by SQLite's own limits:
key <= 2,048 UTF-8 bytes, encoded value <= 2 MiB, 128 keys per batch, SQL text <=
100,000 bytes, <= 100 bound parameters, row <= 2 MiB (`SQLITE_LIMIT_LENGTH`),
database <= `max_db_bytes`.

The database limit is checked before a write rather than left to SQLite alone,
because SQLite answers SQLITE_FULL on a simple statement by rolling back the whole
transaction (the other writes of the turn with it). A KV write that would take the
database past the limit is refused up front (its size is known); SQL runs inside a
savepoint when the database is within `_FULL_SLACK` of the limit and is rolled
back if it grew past it. `PRAGMA max_page_count` at limit + `_FULL_SLACK` is the
backstop; a single statement that jumps past it still loses the turn (the object
is reset).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw

from stateroom import _codec
from stateroom._errors import DurableObjectError, SqlError
from stateroom._files import sqlite_file_bytes

from .sqlpolicy import RESERVED_PREFIX, Policy, mentions_reserved

KV_TABLE = "_stateroom_kv"
META_TABLE = "_stateroom_meta"

MAX_KEY_BYTES = 2048
MAX_VALUE_BYTES = 2 * 1024 * 1024
MAX_BATCH = 128
MAX_SQL_BYTES = 100_000
MAX_BINDINGS = 100
MAX_ROW_BYTES = 2 * 1024 * 1024
# A KV row holds a key and a value at their limits plus record overhead.
_KV_ROW_BYTES = MAX_VALUE_BYTES + MAX_KEY_BYTES + 1024
# KV rows bigger than this may pass MAX_ROW_BYTES: the limit is raised around them.
_BIG_ROW = MAX_ROW_BYTES - 1024
DEFAULT_MAX_DB_BYTES = 10 * 1024**3
# Headroom between the database limit and SQLite's hard max_page_count.
_FULL_SLACK = 2 * MAX_ROW_BYTES
# Cached runtime statement (it names the reserved prefix, so user SQL never hits it).
_PAGE_COUNT = "PRAGMA page_count /* _stateroom_ */"
_PUT = f"INSERT OR REPLACE INTO {KV_TABLE}(key, value) VALUES(?, ?)"
# Re-measure the database size at least every this many writes (it is a PRAGMA).
_SIZE_EVERY = 64
_MAX_PLANS = 512


class _StmtInfo:
    """What one user SQL text does: `scans` (its plan scans a table: count the steps
    with the profile trace), `columns` (result column names, for empty results) and
    `readonly` (SQLite's `sqlite3_stmt_readonly`: it writes nothing, so its rows
    written are 0 without counting)."""

    __slots__ = ("scans", "columns", "readonly")

    def __init__(self, scans: bool, columns: list[str], readonly: bool) -> None:
        self.scans = scans
        self.columns = columns
        self.readonly = readonly


_FULLSCAN = "SQLITE_STMTSTATUS_FULLSCAN_STEP"
_TRACE_ID = "stateroom-rows"


class StorageLockedError(DurableObjectError):
    """Another process holds the object's database (a stale or duplicate worker)."""

    kind = "runtime"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


def key_bytes(key: Any) -> bytes:
    """A KV key as UTF-8 bytes. Raises TypeError / ValueError (naming the limit)."""
    if not isinstance(key, str):
        raise TypeError(f"storage keys must be str, not {type(key).__name__}")
    try:
        b = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("storage keys must be valid Unicode (no lone surrogates)") from None
    if len(b) > MAX_KEY_BYTES:
        raise ValueError(f"key is {len(b)} bytes; the limit is {MAX_KEY_BYTES} UTF-8 bytes")
    return b


def value_bytes(value: Any) -> bytes:
    """A KV value encoded with the codec. Raises TypeError / ValueError (naming the limit)."""
    data = _codec.encode(value)
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(
            f"value is {len(data)} bytes encoded; the limit is {MAX_VALUE_BYTES} bytes (2 MiB)"
        )
    return data


def check_batch(n: int, what: str) -> None:
    if n > MAX_BATCH:
        raise ValueError(f"{what} of {n} keys; the limit is {MAX_BATCH} keys per call")


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`."""
    p = prefix.rstrip(b"\xff")
    if not p:
        return None
    return p[:-1] + bytes([p[-1] + 1])


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?(\*/|$)", re.S)


def _check_query(query: Any) -> None:
    """Raise unless `query` is a str of at most `MAX_SQL_BYTES` UTF-8 bytes."""
    if not isinstance(query, str):
        raise TypeError(f"sql.exec() takes a str query, not {type(query).__name__}")
    if len(query) * 3 > MAX_SQL_BYTES:
        size = len(query.encode("utf-8", "surrogatepass"))
        if size > MAX_SQL_BYTES:
            raise SqlError(
                f"SQL statement is {size:,} bytes; the limit is {MAX_SQL_BYTES:,} bytes",
                apsw.SQLITE_TOOBIG,
            )


def split_statements(query: str) -> list[str]:
    """Split SQL text into statements with SQLite's own tokenizer (`apsw.complete`)."""
    if ";" not in query:
        return [query]
    parts: list[str] = []
    start = 0
    i = query.find(";")
    while i != -1:
        if apsw.complete(query[start : i + 1]):
            parts.append(query[start : i + 1])
            start = i + 1
        i = query.find(";", i + 1)
    parts.append(query[start:])
    stmts = [p for p in parts if _COMMENTS.sub("", p).strip(" \t\r\n;")]
    return stmts or [query]


class Database:
    """The APSW connection of one object and its open transaction.

    Fields:
      path: the object's file.
      conn: the open connection, or None while closed (never opened, reset or evicted).
      in_txn: True between the first write of a batch and its commit/rollback.
        Invariant: in_txn implies conn is not None and not conn.getautocommit().
      on_first_write: called when a write opens a new transaction (the gate uses it
        to schedule the commit).
      on_txn_lost: called with a reason when SQLite rolled back the open transaction
        by itself; the host resets the object (and raises).
      policy: the authorizer state (`sqlpolicy.Policy`); `policy.user` is True only
        while user SQL runs.
      history: the object's WAL history (`pitr.History`) or None when PITR is off.
    """

    def __init__(
        self,
        path: Path,
        durability: str,
        on_first_write: Callable[[], None],
        *,
        max_db_bytes: int = DEFAULT_MAX_DB_BYTES,
        history: Any = None,
    ) -> None:
        self.path = Path(path)
        self.durability = durability
        self.max_db_bytes = int(max_db_bytes)
        self._conn: apsw.Connection | None = None
        # A COMMIT running on a committer thread (commits.py), or None. While it
        # runs, `conn` is not touched from the trio thread: reading `conn` first
        # waits for it (`_settle`), so the connection is never used by two threads.
        self._commit: concurrent.futures.Future[tuple[BaseException | None, float]] | None = None
        # Called (on the trio thread) by `_settle` once a background COMMIT has
        # finished and before `conn` is handed out: the host ends the commit there.
        self.on_commit_done: Callable[[], None] = _nothing
        self.in_txn = False
        self.on_first_write = on_first_write
        self.on_txn_lost: Callable[[str], None] = _ignore
        self.policy = Policy()
        self.history = history
        # Page size of the open database (set at open).
        self._page_size = 4096
        # What is known of user statements already run once (by exact SQL text):
        # whether their plan scans a table, and their result columns. Cleared when
        # the schema may have changed (DDL, delete_all, a restore or import, close).
        self._plans: dict[str, _StmtInfo] = {}
        # Full-scan steps counted by the profile trace during the current statement.
        self._scan_steps = 0
        # (connection, cursor): the cursor known statements run on, and the
        # connection it was made on (reused: making an APSW cursor costs about as
        # much as running a point query). None until the first, or after an error.
        # The reference keeps that connection object alive even once closed, so a
        # new connection is never mistaken for it.
        self._cursor: tuple[apsw.Connection, apsw.Cursor] | None = None
        # Last measured logical size in bytes, and calls since it was measured.
        self._used_cache = 0
        self._used_age = _SIZE_EVERY

    # ------------------------------------------------------------- lifecycle

    @property
    def conn(self) -> apsw.Connection | None:
        """The open connection (None when closed), once no COMMIT runs in the background."""
        if self._commit is not None:
            self.on_commit_done()
        return self._conn

    @conn.setter
    def conn(self, value: apsw.Connection | None) -> None:
        self._conn = value

    @property
    def committing(self) -> bool:
        """True while a COMMIT of this database runs on a committer thread."""
        return self._commit is not None

    def commit_in_background(
        self, pool: concurrent.futures.Executor
    ) -> concurrent.futures.Future[tuple[BaseException | None, float]]:
        """Start the COMMIT of the open transaction on `pool`; `finish_commit` ends it.

        `in_txn` stays True until then: output stays held, new writes wait.
        """
        assert self.in_txn and self._commit is None
        self._commit = pool.submit(self._commit_on_thread)
        return self._commit

    def _commit_on_thread(self) -> tuple[BaseException | None, float]:
        """(error, thread CPU seconds) of the COMMIT, run on a committer thread."""
        start = time.thread_time()
        conn = self._conn
        assert conn is not None
        try:
            self._commit_on(conn)
        except BaseException as exc:  # noqa: BLE001 - handed to the trio thread
            return exc, time.thread_time() - start
        return None, time.thread_time() - start

    def _commit_on(self, conn: apsw.Connection) -> None:
        """COMMIT (rolled back if it fails), then let the PITR history archive."""
        try:
            conn.execute("COMMIT", can_cache=False)
        except apsw.Error:
            if not conn.getautocommit():
                conn.execute("ROLLBACK", can_cache=False)
            raise
        if self.history is not None:
            self.history.after_commit(conn)

    def finish_commit(self) -> tuple[BaseException | None, float] | None:
        """Wait for the background COMMIT (trio thread); (error, cpu s), or None if none."""
        future, self._commit = self._commit, None
        if future is None:
            return None
        result = future.result()
        self.in_txn = False
        return result

    def exists(self) -> bool:
        return self._conn is not None or self.path.exists()

    def open(self, create: bool) -> apsw.Connection | None:
        """The open connection; opens the file (creating it only if `create`).

        Returns None when the file does not exist and `create` is False. Raises
        `StorageLockedError` when another process holds the file.
        """
        if self.conn is not None:
            return self.conn
        if not create and not self.path.exists():
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = apsw.SQLITE_OPEN_READWRITE | (apsw.SQLITE_OPEN_CREATE if create else 0)
        conn = apsw.Connection(str(self.path), flags=flags)
        try:
            self._configure(conn)
        except apsw.BusyError:
            conn.close()
            raise StorageLockedError(
                f"the database of object {self.path.stem[:16]}… is locked by another process"
            ) from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn
        return conn

    def _configure(self, conn: apsw.Connection) -> None:
        conn.set_busy_timeout(0)
        conn.authorizer = self.policy.authorize

        def x(sql: str) -> Any:
            return conn.execute(sql, can_cache=False).get

        x("PRAGMA locking_mode=EXCLUSIVE")
        mode = x("PRAGMA journal_mode=WAL")
        if str(mode).lower() != "wal":
            raise apsw.CantOpenError(f"cannot put {self.path} in WAL mode (got {mode})")
        x("PRAGMA synchronous=" + ("FULL" if self.durability == "full" else "NORMAL"))
        x("PRAGMA foreign_keys=ON")
        page_size = int(x("PRAGMA page_size"))
        self._page_size = page_size
        x(f"PRAGMA max_page_count={max(2, (self.max_db_bytes + _FULL_SLACK) // page_size)}")
        conn.limit(apsw.SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES)
        conn.limit(apsw.SQLITE_LIMIT_VARIABLE_NUMBER, MAX_BINDINGS)
        # Rows (and strings/blobs) of user SQL; KV writes of a near-limit value raise it.
        conn.limit(apsw.SQLITE_LIMIT_LENGTH, MAX_ROW_BYTES)
        if self.history is not None:
            # Only the history checkpoints (after archiving): not SQLite at close.
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            # Archives whatever WAL a crashed predecessor left, then labels commits.
            self.history.attach(conn)
        # Take the write lock now; locking_mode=EXCLUSIVE keeps it until close.
        x("BEGIN IMMEDIATE")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {KV_TABLE}(key BLOB PRIMARY KEY, value BLOB NOT NULL)"
            " WITHOUT ROWID"
        )
        x("COMMIT")

    def close(self) -> None:
        """Roll back any open transaction, let the PITR history archive the WAL, close."""
        if self.conn is None:
            return
        conn = self.conn
        self.forget_plans()
        try:
            if self.in_txn:
                self.rollback()
            if self.history is not None:
                try:
                    self.history.before_close(conn)
                except (OSError, apsw.Error):
                    # Best effort: the frames stay in the WAL, and the next open
                    # archives them before anything else touches the file.
                    pass
        finally:
            self.conn = None
            self.in_txn = False
            conn.close()
        wal = str(self.path) + "-wal"
        with contextlib.suppress(OSError):
            if os.path.getsize(wal) == 0:
                os.unlink(wal)  # archived and truncated: nothing left in it

    def _x(self, sql: str) -> None:
        """Run one of the runtime's own control statements (never cached: see sqlpolicy)."""
        assert self.conn is not None
        self.conn.execute(sql, can_cache=False)

    # ------------------------------------------------------------- transactions

    def write_conn(self) -> apsw.Connection:
        """The connection inside an open transaction (opening one if needed)."""
        conn = self.open(create=True)
        assert conn is not None
        if not self.in_txn:
            self._x("BEGIN IMMEDIATE")
            self.in_txn = True
            self.on_first_write()
        return conn

    def commit(self) -> None:
        """Commit the open transaction (fsynced under `full`). Raises on failure."""
        conn = self.conn  # (waits for a background COMMIT first)
        if not self.in_txn:
            return
        assert conn is not None
        self.in_txn = False
        self._commit_on(conn)

    def rollback(self) -> None:
        if self.in_txn and self.conn is not None:
            self.forget_plans()  # a rolled-back schema change is undone
            self.in_txn = False
            if not self.conn.getautocommit():
                self._x("ROLLBACK")

    @contextlib.contextmanager
    def _atomic(self, needed: bool = True) -> Iterator[None]:
        """Make a multi-row write all-or-nothing within the open transaction."""
        if not needed:
            try:
                yield
            except apsw.Error as exc:
                self._after_error(exc)
                raise
            return
        self._x("SAVEPOINT _stateroom_call")
        try:
            yield
        except BaseException as exc:
            conn = self.conn
            self.forget_plans()
            if conn is not None and not conn.getautocommit():
                self._x("ROLLBACK TO _stateroom_call")
                self._x("RELEASE _stateroom_call")
            if isinstance(exc, apsw.Error):
                self._after_error(exc)
            raise
        self._x("RELEASE _stateroom_call")

    def _after_error(self, exc: apsw.Error) -> None:
        """If SQLite rolled back the whole transaction, the turn's writes are gone."""
        conn = self.conn
        if self.in_txn and conn is not None and conn.getautocommit():
            self.in_txn = False
            self.on_txn_lost(f"SQLite rolled back the transaction: {exc}")

    def used_bytes(self) -> int:
        """Logical size of the open database (pages in use, WAL included)."""
        assert self.conn is not None
        self._used_age = 0
        self._used_cache = int(self.conn.execute(_PAGE_COUNT).get) * self._page_size
        return self._used_cache

    def _used_estimate(self) -> int:
        """`used_bytes()`, re-measured every `_SIZE_EVERY` calls or near the limit."""
        self._used_age += 1
        if self._used_age >= _SIZE_EVERY or self._used_cache + _FULL_SLACK > self.max_db_bytes:
            return self.used_bytes()
        return self._used_cache

    def full_message(self) -> str:
        return f"database is full: the limit is {self.max_db_bytes:,} bytes (--max-db-bytes)"

    def limit_error(self, exc: apsw.Error) -> str | None:
        """A message naming the limit `exc` hit, or None."""
        if isinstance(exc, apsw.FullError):
            return self.full_message()
        if isinstance(exc, apsw.TooBigError):
            return f"row too big: the limit is {MAX_ROW_BYTES:,} bytes (2 MiB) per row ({exc})"
        return None

    # ------------------------------------------------------------- KV

    def kv_get(self, key: str) -> Any:
        kb = key_bytes(key)
        conn = self.open(create=False)
        if conn is None:
            return None
        for (v,) in conn.execute(f"SELECT value FROM {KV_TABLE} WHERE key=?", (kb,)):
            return _codec.decode(v)
        return None

    def kv_get_many(self, keys: list[str]) -> dict[str, Any]:
        """Present keys only, in key order."""
        check_batch(len(keys), "get()")
        kbs = sorted({key_bytes(k) for k in keys})
        conn = self.open(create=False)
        if conn is None:
            return {}
        out = {}
        for kb in kbs:
            for (v,) in conn.execute(f"SELECT value FROM {KV_TABLE} WHERE key=?", (kb,)):
                out[kb.decode("utf-8")] = _codec.decode(v)
        return out

    def kv_put_many(self, entries: dict[str, Any]) -> int:
        """Write every entry or none. Returns the number of rows written."""
        if not isinstance(entries, dict):
            raise TypeError(
                f"put() takes a key and a value, or a dict; not {type(entries).__name__}"
            )
        check_batch(len(entries), "put()")
        # Encode everything first: a bad key or value writes nothing.
        rows = [(key_bytes(k), value_bytes(v)) for k, v in entries.items()]
        if not rows:
            return 0
        if len(rows) == 1:
            self._put_row(*rows[0])
            return 1
        conn = self.write_conn()
        estimate = sum(len(k) + len(v) + 64 for k, v in rows)
        self._check_room(estimate)
        big = any(len(k) + len(v) > _BIG_ROW for k, v in rows)
        try:
            if big:
                conn.limit(apsw.SQLITE_LIMIT_LENGTH, _KV_ROW_BYTES)
            with self._atomic():
                conn.executemany(_PUT, rows)
        except apsw.Error as exc:
            message = self.limit_error(exc)
            if message is not None:
                raise ValueError(message) from None
            raise
        finally:
            if big:
                conn.limit(apsw.SQLITE_LIMIT_LENGTH, MAX_ROW_BYTES)
        self._used_cache += estimate
        return len(rows)

    def kv_put(self, key: str, value: Any) -> None:
        """Write one entry (the common case of `kv_put_many`)."""
        self._put_row(key_bytes(key), value_bytes(value))

    def _put_row(self, kb: bytes, vb: bytes) -> None:
        conn = self.write_conn()
        size = len(kb) + len(vb)
        self._check_room(size + 64)
        try:
            if size > _BIG_ROW:
                conn.limit(apsw.SQLITE_LIMIT_LENGTH, _KV_ROW_BYTES)
            conn.execute(_PUT, (kb, vb))
        except apsw.Error as exc:
            self._after_error(exc)
            message = self.limit_error(exc)
            if message is not None:
                raise ValueError(message) from None
            raise
        finally:
            if size > _BIG_ROW:
                conn.limit(apsw.SQLITE_LIMIT_LENGTH, MAX_ROW_BYTES)
        self._used_cache += size + 64

    def _check_room(self, estimate: int) -> None:
        """Refuse (ValueError) a KV write that would take the database past its limit."""
        if self._used_estimate() + estimate > self.max_db_bytes:
            if self.used_bytes() + estimate > self.max_db_bytes:
                raise ValueError(self.full_message())

    def kv_delete_many(self, keys: list[str]) -> int:
        """Delete the keys; returns how many existed."""
        check_batch(len(keys), "delete()")
        kbs = {key_bytes(k) for k in keys}
        if not kbs or self.open(create=False) is None:
            return 0
        conn = self.write_conn()
        n = 0
        with self._atomic(len(kbs) > 1):
            for kb in kbs:
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
        """Entries in ascending UTF-8 byte order of keys (`end` exclusive).

        With `reverse`, the last `limit` keys in descending order.
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0
        ):
            raise ValueError("list() limit must be a positive integer")
        if start is not None and start_after is not None:
            raise ValueError("list() takes start or start_after, not both")
        where: list[str] = []
        args: list[Any] = []
        if start is not None:
            where.append("key >= ?")
            args.append(key_bytes(start))
        if start_after is not None:
            where.append("key > ?")
            args.append(key_bytes(start_after))
        if end is not None:
            where.append("key < ?")
            args.append(key_bytes(end))
        if prefix is not None:
            pb = key_bytes(prefix)
            if pb:
                where.append("key >= ?")
                args.append(pb)
                upper = prefix_end(pb)
                if upper is not None:
                    where.append("key < ?")
                    args.append(upper)
        conn = self.open(create=False)
        if conn is None:
            return {}
        sql = f"SELECT key, value FROM {KV_TABLE}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY key " + ("DESC" if reverse else "ASC")
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return {k.decode("utf-8"): _codec.decode(v) for k, v in conn.execute(sql, args)}

    def delete_all(self) -> None:
        """Delete every KV entry and every SQL table, view and index (one atomic step).

        The alarm is the caller's (it lives in `_stateroom_meta`); the file itself goes
        when the object is evicted with nothing left (`is_empty`).
        """
        conn = self.open(create=False)
        if conn is None:
            return
        conn = self.write_conn()
        self.forget_plans()
        with self._atomic():
            self._x("PRAGMA defer_foreign_keys=ON")
            conn.execute(f"DELETE FROM {KV_TABLE}")
            objects = [
                (str(kind), str(name), str(sql))
                for kind, name, sql in conn.execute(
                    "SELECT type, name, coalesce(sql, '') FROM sqlite_master"
                    " WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite!_%' ESCAPE '!'"
                    " AND substr(name, 1, 11) != '_stateroom_'"
                )
            ]
            # Views first, then virtual tables (which own shadow tables), then the rest.
            objects.sort(
                key=lambda o: (o[0] != "view", not o[2].upper().startswith("CREATE VIRTUAL"))
            )
            for kind, name, _sql in objects:
                quoted = '"' + name.replace('"', '""') + '"'
                self._x(f"DROP {'VIEW' if kind == 'view' else 'TABLE'} IF EXISTS {quoted}")
            self._x("PRAGMA user_version=0")

    def is_empty(self) -> bool:
        """True when the object holds no KV entry, no SQL object and no runtime state."""
        if self.history is not None and self.history.restore_pending():
            return False
        conn = self.open(create=False)
        if conn is None:
            return True
        for _ in conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name NOT LIKE 'sqlite!_%' ESCAPE '!'"
            " AND substr(name, 1, 11) != '_stateroom_' LIMIT 1"
        ):
            return False
        for _ in conn.execute(f"SELECT 1 FROM {KV_TABLE} LIMIT 1"):
            return False
        if conn.table_exists("main", META_TABLE):
            for _ in conn.execute(f"SELECT 1 FROM {META_TABLE} LIMIT 1"):
                return False
        return True

    def remove_files(self) -> None:
        """Close and delete the object's file, its WAL and its history."""
        self.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(str(self.path) + suffix)
        if self.history is not None:
            self.history.remove()

    def size_bytes(self) -> int:
        """Bytes on disk of the database and its WAL (history not included)."""
        return sqlite_file_bytes(self.path)

    # ------------------------------------------------------------- SQL

    def sql_exec(
        self, query: Any, bindings: tuple[Any, ...]
    ) -> tuple[list[str], list[tuple[Any, ...]], int, int]:
        """Run user SQL: every statement now, all or nothing.

        Returns (column names, rows of the last statement, rows read, rows written).
        Rows read: rows SQLite stepped through in full scans plus rows returned;
        rows written: rows inserted, updated or deleted (incl. by triggers).
        Raises SqlError (with `.sqlite_code`) and leaves nothing of the call behind.

        A SQL text seen before (one statement, already checked: a str within the
        length limit) takes a fast path: no statement splitting, no savepoint (one
        statement is atomic by itself), a reused APSW cursor, the profile trace only
        if its plan scans a table, and no change count if it is read-only.
        """
        info = self._plans.get(query) if type(query) is str else None
        if info is None:
            _check_query(query)
        if len(bindings) > MAX_BINDINGS:
            raise SqlError(
                f"{len(bindings)} bound parameters; the limit is {MAX_BINDINGS} per statement",
                apsw.SQLITE_RANGE,
            )
        conn = self.conn
        if conn is None or not self.in_txn:
            conn = self.write_conn()
        if info is not None:
            # Inline `_used_estimate()`: this is the hot path of every known statement.
            self._used_age += 1
            if self._used_age >= _SIZE_EVERY or self._used_cache + _FULL_SLACK > self.max_db_bytes:
                self.used_bytes()
            if self._used_cache + _FULL_SLACK <= self.max_db_bytes:
                return self._sql_exec_known(conn, query, bindings, info)
        return self._sql_exec_full(conn, query, bindings)

    def _on_profile(self, event: dict[str, Any]) -> None:
        if not event.get("trigger"):
            self._scan_steps += event["stmt_status"].get(_FULLSCAN, 0)

    def _sql_exec_known(
        self, conn: apsw.Connection, query: str, bindings: tuple[Any, ...], info: _StmtInfo
    ) -> tuple[list[str], list[tuple[Any, ...]], int, int]:
        policy = self.policy
        reuse = self._cursor
        if reuse is not None and reuse[0] is conn:
            cursor = reuse[1]
        else:
            cursor = conn.cursor()
            self._cursor = (conn, cursor)
        writes = not info.readonly
        before = conn.total_changes() if writes else 0
        self._scan_steps = 0
        scans = info.scans
        if scans:
            conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, self._on_profile, id=_TRACE_ID)
        policy.user = True
        policy.refused = None
        try:
            rows = cursor.execute(query, bindings).fetchall()
        except apsw.Error as exc:
            policy.user = False
            self._cursor = None
            self._after_error(exc)
            raise self._sql_error(exc) from None
        finally:
            policy.user = False
            if scans:
                conn.trace_v2(0, None, id=_TRACE_ID)
        if policy.schema_changed:
            self.forget_plans()
        written = conn.total_changes() - before if writes else 0
        return info.columns, rows, self._scan_steps + len(rows), written

    def _sql_exec_full(
        self, conn: apsw.Connection, query: str, bindings: tuple[Any, ...]
    ) -> tuple[list[str], list[tuple[Any, ...]], int, int]:
        statements = split_statements(query)
        reserved = mentions_reserved(query)
        # Prepared afresh: a cached statement prepared before a schema change still
        # describes its old columns until its first step re-prepares it.
        cache = False
        policy = self.policy
        columns: list[str] = []
        # Whether the last statement writes nothing (False until known).
        readonly = [False]

        def on_exec(cursor: apsw.Cursor, sql: str, _bindings: Any) -> bool:
            readonly[0] = cursor.is_readonly
            try:
                columns[:] = [d[0] for d in cursor.get_description()]
            except apsw.ExecutionCompleteError:
                columns.clear()
            return True

        returned = 0
        used = self.used_bytes()
        near_full = used + _FULL_SLACK > self.max_db_bytes
        before = conn.total_changes()
        self._scan_steps = 0
        conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, self._on_profile, id=_TRACE_ID)
        try:
            with self._atomic(len(statements) > 1 or reserved or near_full):
                policy.user = True
                policy.refused = None
                try:
                    for stmt in statements[:-1]:
                        for _ in conn.execute(stmt, can_cache=cache):
                            returned += 1
                    cursor = conn.cursor()
                    cursor.exec_trace = on_exec
                    rows = list(cursor.execute(statements[-1], bindings, can_cache=cache))
                finally:
                    policy.user = False
                if reserved:
                    self._refuse_reserved_definitions(conn)
                if near_full and self.used_bytes() > max(used, self.max_db_bytes):
                    raise apsw.FullError("database or disk is full")
        except apsw.Error as exc:
            raise self._sql_error(exc) from None
        finally:
            conn.trace_v2(0, None, id=_TRACE_ID)
        written = conn.total_changes() - before
        read = self._scan_steps + returned + len(rows)
        if policy.schema_changed:
            self.forget_plans()
        elif len(statements) == 1 and not reserved:
            self._learn(conn, query, bindings, columns, readonly[0])
        return columns, rows, read, written

    def _learn(
        self,
        conn: apsw.Connection,
        query: str,
        bindings: tuple[Any, ...],
        columns: list[str],
        readonly: bool,
    ) -> None:
        """Remember a statement that ran: whether its plan scans a table, its columns,
        whether it is read-only."""
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()
        try:
            plan = conn.execute("EXPLAIN QUERY PLAN " + query, bindings, can_cache=False).fetchall()
        except (apsw.Error, TypeError, ValueError):
            return
        scans = any(
            str(row[-1]).startswith("SCAN ") and "CONSTANT ROW" not in str(row[-1]) for row in plan
        )
        self._plans[query] = _StmtInfo(scans, list(columns), readonly)

    def forget_plans(self) -> None:
        """The schema may have changed: statements are looked at afresh."""
        self._plans.clear()
        self.policy.schema_changed = False

    def _refuse_reserved_definitions(self, conn: apsw.Connection) -> None:
        """Views and triggers are not resolved when created: refuse any naming a reserved table."""
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('view', 'trigger')"
            " AND instr(lower(sql), ?) > 0",
            (RESERVED_PREFIX,),
        ):
            self.policy.refused = f"{name} refers to a reserved table"
            raise apsw.AuthError(f"not authorized: {name} refers to a reserved table")

    def _sql_error(self, exc: apsw.Error) -> SqlError:
        code = getattr(exc, "result", None)
        message = self.limit_error(exc)
        if isinstance(exc, apsw.AuthError):
            what = self.policy.refused
            message = "not authorized" + (f": {what}" if what else "")
            code = apsw.SQLITE_AUTH
        elif "cannot VACUUM" in str(exc):
            # SQLite refuses VACUUM in a transaction before consulting the authorizer.
            message, code = "not authorized: VACUUM", apsw.SQLITE_AUTH
        elif str(exc).startswith("not authorized"):
            message, code = str(exc), apsw.SQLITE_AUTH
        elif message is None:
            message = str(exc)
            if "too many SQL variables" in message:
                message += f" (the limit is {MAX_BINDINGS} bound parameters)"
        return SqlError(message, code)

    # ------------------------------------------------------------- whole-state copies

    def export_bytes(self) -> bytes:
        """The committed state as one SQLite file (call with no transaction open)."""
        if self.in_txn:
            raise RuntimeError("export with a transaction open")
        conn = self.open(create=False)
        if conn is None:
            mem = apsw.Connection(":memory:")
            try:
                mem.execute(
                    f"CREATE TABLE {KV_TABLE}(key BLOB PRIMARY KEY, value BLOB NOT NULL)"
                    " WITHOUT ROWID"
                )
                return mem.serialize("main")
            finally:
                mem.close()
        data = bytearray(conn.serialize("main"))
        if len(data) >= 20:
            data[18] = data[19] = 1  # a plain (rollback-journal) file, openable anywhere
        return bytes(data)

    def replace_with(self, source: apsw.Connection) -> None:
        """Make the object's state a copy of `source` (backup API), as one commit.

        The copy goes through the WAL like any commit, so PITR history records it and
        can undo it. Call with no transaction open.
        """
        if self.in_txn:
            raise RuntimeError("replace_with with a transaction open")
        conn = self.open(create=True)
        assert conn is not None
        self.forget_plans()
        with conn.backup("main", source, "main") as backup:
            while not backup.done:
                backup.step(-1)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {KV_TABLE}(key BLOB PRIMARY KEY, value BLOB NOT NULL)"
            " WITHOUT ROWID"
        )
        if self.history is not None:
            self.history.after_commit(conn)

    def page_size(self) -> int:
        conn = self.open(create=True)
        assert conn is not None
        return int(conn.execute("PRAGMA page_size", can_cache=False).get)


def load_sqlite_image(data: bytes, page_size: int) -> apsw.Connection:
    """An in-memory connection holding the SQLite file `data`, checked and ready to copy.

    Raises ValueError when `data` is not a sound SQLite database.
    """
    if len(data) < 100 or data[:16] != b"SQLite format 3\x00":
        raise ValueError("not an SQLite database file")
    image = bytearray(data)
    image[18] = image[19] = 1  # WAL images deserialize as plain files
    mem = apsw.Connection(":memory:")
    try:
        mem.deserialize("main", bytes(image))
        check = mem.execute("PRAGMA quick_check").fetchall()
        if check != [("ok",)]:
            raise ValueError(f"the SQLite file is damaged: {check[0][0]}")
        if int(mem.execute("PRAGMA page_size").get) != page_size:
            mem.execute(f"PRAGMA page_size={page_size}")
            mem.execute("VACUUM")
        if mem.table_exists("main", KV_TABLE):
            cols = [r[1] for r in mem.execute(f"PRAGMA table_info({KV_TABLE})")]
            if cols[:2] != ["key", "value"]:
                raise ValueError(f"the file's {KV_TABLE} table has an unexpected shape: {cols}")
    except apsw.Error as exc:
        mem.close()
        raise ValueError(f"not a usable SQLite database: {exc}") from None
    except BaseException:
        mem.close()
        raise
    return mem


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _nothing() -> None:
    pass


def _ignore(reason: str) -> None:
    pass


def sql_error(exc: apsw.Error) -> SqlError:
    code = getattr(exc, "result", None)
    return SqlError(str(exc), code)
