"""Object snapshots: an object's whole state as one SQLite file (export / import).

Export is taken while the object serves: the owning worker closes the object's input
gate (so no `transaction` is half-open), commits the writes made so far, and
serializes its own connection (`Connection.serialize`, which reads through the
WAL), so the file is one consistent committed state. The file is a plain
rollback-journal SQLite database that any SQLite tool can open; KV entries are in
the table `_stateroom_kv` (keys UTF-8 bytes, values in the stateroom codec).

Import checks the file first (an SQLite header, `PRAGMA quick_check`, a sane KV
table), so bad input changes nothing; then it resets the object (in-flight events
fail, the instance is dropped) and copies the file into the object's database with
the backup API as one commit. The object sees the imported state at its next event;
the import is recorded in the PITR history like any commit, so it can be undone.
"""

from __future__ import annotations

import struct
from typing import Any

from stateroom._protocol import Target

from .storage import load_sqlite_image

DEFAULT_PAGE_SIZE = 4096


def _page_size(host: Any) -> int:
    db = host.db
    if db.conn is not None:
        return db.page_size()
    try:
        with open(db.path, "rb") as f:
            header = f.read(18)
    except FileNotFoundError:
        return DEFAULT_PAGE_SIZE
    if len(header) < 18:
        return DEFAULT_PAGE_SIZE
    size = struct.unpack(">H", header[16:18])[0]
    return 65536 if size == 1 else size


async def export_state(worker: Any, target: Target) -> bytes:
    """The object's committed state as SQLite file bytes (an empty database if none)."""
    created = (target.class_name, target.id) not in worker.catalog
    host = worker.host_for(target)
    try:
        async with host.gate:
            host.commit()
            return host.db.export_bytes()
    finally:
        if created and host.is_idle() and host.instance is None:
            worker.evict(host)


async def import_state(worker: Any, target: Target, data: bytes) -> None:
    """Replace the object's state with the SQLite file `data` (reset; seen at next event).

    Raises ValueError, changing nothing, when `data` is not a usable SQLite database.
    """
    host = worker.host_for(target)
    source = load_sqlite_image(bytes(data), _page_size(host))
    try:
        async with host.gate:
            host.reset("its state was replaced by an import")
            host.db.replace_with(source)
    finally:
        source.close()
    alarms = worker.alarms
    notify = getattr(alarms, "on_state_replaced", None) or getattr(alarms, "_announce", None)
    if notify is not None:
        notify(host)
