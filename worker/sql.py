"""`ctx.storage.sql`: synchronous SQL on the object's own database.

`exec(query, *bindings)` runs every statement of `query` at once, inside the
object's open transaction (writes take effect even if the cursor is never read; they
commit with the turn, see `catalog.py`). Several statements may be given in one
string: they are split with SQLite's own tokenizer, the bindings apply to the last
one, and the returned `Cursor` holds the last one's rows. One call is all or
nothing: a failing or refused statement (see `sqlpolicy.py`) leaves none of the
call's statements applied.

`Cursor.rows_read` counts rows SQLite stepped through in full-table scans plus rows
returned; `rows_written` counts rows inserted, updated or deleted (triggers
included). Both also feed the object's usage meters (billing).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from stateroom._errors import SqlError

from .catalog import ObjectHost


class Cursor:
    """The result of `sql.exec`: the rows of the last statement, read once.

    Iterating yields rows as dicts (column name -> value); `raw()` yields tuples.
    Both advance the same position. `column_names`, `rows_read` and `rows_written`
    are known up front.
    """

    __slots__ = ("column_names", "_rows", "_pos", "rows_read", "rows_written")

    def __init__(
        self, columns: list[str], rows: list[tuple[Any, ...]], rows_read: int, rows_written: int
    ) -> None:
        self.column_names = columns
        self._rows = rows
        # Index of the next row to hand out.
        self._pos = 0
        self.rows_read = rows_read
        self.rows_written = rows_written

    def raw(self) -> Iterator[tuple[Any, ...]]:
        """The remaining rows as tuples (in column order)."""
        while self._pos < len(self._rows):
            row = self._rows[self._pos]
            self._pos += 1
            yield row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._pos >= len(self._rows):
            raise StopIteration
        row = self._rows[self._pos]
        self._pos += 1
        return dict(zip(self.column_names, row))  # noqa: B905 - same length; strict= costs

    def next(self) -> dict[str, Any] | None:
        """The next row, or None when there is none."""
        return next(self, None)

    def to_array(self) -> list[dict[str, Any]]:
        """The remaining rows as a list of dicts."""
        return list(self)

    def one(self) -> dict[str, Any]:
        """The only row. Raises SqlError unless exactly one row remains."""
        left = len(self._rows) - self._pos
        if left != 1:
            self._pos = len(self._rows)
            raise SqlError(f"expected exactly one row, got {'none' if not left else left}")
        row = self._rows[self._pos]
        self._pos += 1
        return dict(zip(self.column_names, row))  # noqa: B905 - same length; strict= costs

    def __repr__(self) -> str:
        return (
            f"<Cursor columns={self.column_names} rows={len(self._rows)}"
            f" read={self.rows_read} written={self.rows_written}>"
        )


class SqlStorage:
    """`ctx.storage.sql`."""

    def __init__(self, host: ObjectHost) -> None:
        self._host = host

    def exec(self, query: str, *bindings: Any) -> Cursor:
        """Run `query` (one or more statements) now; bindings apply to the last one.

        Raises SqlError (a ValueError with `.sqlite_code`) for SQL errors, refused
        statements ("not authorized") and SQL limits; nothing of the call is applied.
        """
        host = self._host
        columns, rows, read, written = host.db.sql_exec(query, bindings)
        host.note_write()
        if host.txn_depth:
            gate = host.gate
            if gate.locked() and not gate.held_by_current_task():
                host.txn_foreign_writes = True
        counters = host.counters
        counters.rows_read += read
        counters.rows_written += written
        return Cursor(columns, rows, read, written)

    @property
    def database_size(self) -> int:
        """Bytes the database takes on disk (file plus write-ahead log)."""
        return self._host.db.size_bytes()
