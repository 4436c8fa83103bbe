"""`ctx.storage.sql`: synchronous SQL on the object's own database.

`exec(query, *bindings)` runs every statement of `query` at once (writes take
effect even if the cursor is never read); bindings apply to the last statement,
whose rows the returned `Cursor` yields.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apsw

from stateroom._errors import SqlError

from .catalog import ObjectHost


class Cursor:
    def __init__(self, columns: list[str], rows: list[tuple], rows_read: int, rows_written: int):
        self.column_names = columns
        self._rows = rows
        self._pos = 0
        self.rows_read = rows_read
        self.rows_written = rows_written

    def raw(self) -> Iterator[tuple]:
        while self._pos < len(self._rows):
            row = self._rows[self._pos]
            self._pos += 1
            yield row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.raw():
            yield dict(zip(self.column_names, row, strict=False))

    def __next__(self) -> dict[str, Any]:
        if self._pos >= len(self._rows):
            raise StopIteration
        row = self._rows[self._pos]
        self._pos += 1
        return dict(zip(self.column_names, row, strict=False))

    def to_array(self) -> list[dict[str, Any]]:
        return list(self)

    def one(self) -> dict[str, Any]:
        rows = self.to_array()
        if len(rows) != 1:
            raise SqlError(f"expected exactly one row, got {len(rows)}")
        return rows[0]


class SqlStorage:
    def __init__(self, host: ObjectHost) -> None:
        self._host = host

    def exec(self, query: str, *bindings: Any) -> Cursor:
        host = self._host
        host.note_write()
        conn = host.db.write_conn()
        try:
            before = conn.total_changes()
            cur = conn.cursor()
            rows = list(cur.execute(query, bindings or None))
            try:
                columns = [d[0] for d in cur.getdescription()]
            except apsw.ExecutionCompleteError:
                columns = []
            written = conn.total_changes() - before
        except apsw.Error as exc:
            raise SqlError(str(exc), getattr(exc, "result", None)) from None
        return Cursor(columns, rows, len(rows), written)

    @property
    def database_size(self) -> int:
        return self._host.db.size_bytes()
