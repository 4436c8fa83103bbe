"""The SQL policy: what user SQL (`ctx.storage.sql.exec`) may do to its database.

The policy is enforced by SQLite's authorizer (installed by `storage.Database` on
every connection), never by parsing SQL by hand: SQLite calls `authorize` for every
action while it prepares a statement, and a refused action fails the prepare with
SQLite's own "not authorized" error, so nothing of the statement runs.

Refused for user SQL:
  * transaction control: BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE (the runtime
    owns the transaction; see the gates in `catalog.py`);
  * ATTACH and DETACH, and so VACUUM / VACUUM INTO (SQLite authorizes a VACUUM as an
    ATTACH of its target);
  * pragmas other than read-only introspection (`INTROSPECTION_PRAGMAS`, and
    `user_version` only when read);
  * `load_extension()`;
  * any access to a reserved table, index, trigger or view: names starting with
    `_stateroom_` (case-insensitive), which hold KV data, alarms and runtime state.

Invariants:
  * `Policy.user` is True exactly while user SQL is being prepared or run; the
    runtime's own statements run with it False and are never refused.
  * A statement prepared with `user` False is never handed to user SQL: user SQL that
    names a reserved table is prepared without the statement cache (`mentions_reserved`),
    so it cannot hit a cached runtime statement that skipped the checks.
"""

from __future__ import annotations

import apsw

RESERVED_PREFIX = "_stateroom_"

# Read-only introspection pragmas user SQL may run (any argument).
INTROSPECTION_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "foreign_key_check",
        "quick_check",
        "integrity_check",
        # Not introspection, but scoped to the open transaction (reset at commit) and
        # needed to reshape tables that foreign keys point at.
        "defer_foreign_keys",
    }
)

_OK = apsw.SQLITE_OK
_DENY = apsw.SQLITE_DENY

# Actions whose first argument names a table, index, trigger or view.
_NAME_IN_ARG1 = frozenset(
    {
        apsw.SQLITE_CREATE_INDEX,
        apsw.SQLITE_CREATE_TABLE,
        apsw.SQLITE_CREATE_TEMP_INDEX,
        apsw.SQLITE_CREATE_TEMP_TABLE,
        apsw.SQLITE_CREATE_TEMP_TRIGGER,
        apsw.SQLITE_CREATE_TEMP_VIEW,
        apsw.SQLITE_CREATE_TRIGGER,
        apsw.SQLITE_CREATE_VIEW,
        apsw.SQLITE_DELETE,
        apsw.SQLITE_DROP_INDEX,
        apsw.SQLITE_DROP_TABLE,
        apsw.SQLITE_DROP_TEMP_INDEX,
        apsw.SQLITE_DROP_TEMP_TABLE,
        apsw.SQLITE_DROP_TEMP_TRIGGER,
        apsw.SQLITE_DROP_TEMP_VIEW,
        apsw.SQLITE_DROP_TRIGGER,
        apsw.SQLITE_DROP_VIEW,
        apsw.SQLITE_INSERT,
        apsw.SQLITE_READ,
        apsw.SQLITE_UPDATE,
        apsw.SQLITE_REINDEX,
        apsw.SQLITE_ANALYZE,
        apsw.SQLITE_CREATE_VTABLE,
        apsw.SQLITE_DROP_VTABLE,
    }
)
# Actions whose second argument names a table (the index's or trigger's table).
_NAME_IN_ARG2 = frozenset(
    {
        apsw.SQLITE_CREATE_INDEX,
        apsw.SQLITE_CREATE_TEMP_INDEX,
        apsw.SQLITE_CREATE_TRIGGER,
        apsw.SQLITE_CREATE_TEMP_TRIGGER,
        apsw.SQLITE_DROP_INDEX,
        apsw.SQLITE_DROP_TEMP_INDEX,
        apsw.SQLITE_DROP_TRIGGER,
        apsw.SQLITE_DROP_TEMP_TRIGGER,
        apsw.SQLITE_ALTER_TABLE,
    }
)
# Actions that change the schema (or statistics, hence query plans).
_SCHEMA_CHANGES = frozenset(
    {
        apsw.SQLITE_CREATE_INDEX,
        apsw.SQLITE_CREATE_TABLE,
        apsw.SQLITE_CREATE_TRIGGER,
        apsw.SQLITE_CREATE_VIEW,
        apsw.SQLITE_CREATE_VTABLE,
        apsw.SQLITE_DROP_INDEX,
        apsw.SQLITE_DROP_TABLE,
        apsw.SQLITE_DROP_TRIGGER,
        apsw.SQLITE_DROP_VIEW,
        apsw.SQLITE_DROP_VTABLE,
        apsw.SQLITE_ALTER_TABLE,
        apsw.SQLITE_ANALYZE,
        apsw.SQLITE_REINDEX,
    }
)
_ALWAYS_REFUSED = frozenset(
    {apsw.SQLITE_TRANSACTION, apsw.SQLITE_SAVEPOINT, apsw.SQLITE_ATTACH, apsw.SQLITE_DETACH}
)


def is_reserved(name: str | None) -> bool:
    return name is not None and name[:11].lower() == RESERVED_PREFIX


def mentions_reserved(sql: str) -> bool:
    """True if `sql` might name a reserved object (it is then prepared uncached)."""
    return RESERVED_PREFIX in sql.lower()


class Policy:
    """The authorizer of one connection.

    Fields:
      user: True while user SQL runs (checks apply); False for the runtime's own SQL.
      refused: a description of the last refused action (for the error message), or
        None; cleared by the caller before each user statement.
      schema_changed: set when user SQL prepared a schema change (DDL, ANALYZE);
        cleared by the storage layer once it forgot what it knew of statements.
    """

    __slots__ = ("user", "refused", "schema_changed")

    def __init__(self) -> None:
        self.user = False
        self.refused: str | None = None
        self.schema_changed = False

    def authorize(
        self,
        action: int,
        arg1: str | None,
        arg2: str | None,
        dbname: str | None,
        trigger_or_view: str | None,
    ) -> int:
        if not self.user:
            return _OK
        if action in _ALWAYS_REFUSED:
            return self._refuse(_describe(action, arg1))
        if action == apsw.SQLITE_PRAGMA:
            name = (arg1 or "").lower()
            if name == "user_version" and arg2 is None:
                return _OK
            if name not in INTROSPECTION_PRAGMAS:
                return self._refuse(f"PRAGMA {arg1}")
            if is_reserved(arg2):
                return self._refuse(f"PRAGMA {arg1} on reserved table {arg2}")
            return _OK
        if action == apsw.SQLITE_FUNCTION:
            if (arg2 or "").lower() == "load_extension":
                return self._refuse("load_extension()")
            return _OK
        if (action in _NAME_IN_ARG1 and is_reserved(arg1)) or (
            action in _NAME_IN_ARG2 and is_reserved(arg2)
        ):
            return self._refuse(f"access to reserved table {arg1 if is_reserved(arg1) else arg2}")
        if action in _SCHEMA_CHANGES:
            self.schema_changed = True
        return _OK

    def _refuse(self, what: str) -> int:
        self.refused = what
        return _DENY


def _describe(action: int, arg1: str | None) -> str:
    if action == apsw.SQLITE_TRANSACTION:
        return f"{arg1} (transactions are managed by the runtime; use ctx.storage.transaction)"
    if action == apsw.SQLITE_SAVEPOINT:
        return f"SAVEPOINT/{arg1} (transactions are managed by the runtime)"
    if action == apsw.SQLITE_ATTACH:
        return "ATTACH or VACUUM"
    return "DETACH"
