"""The supervisor's runtime database: `DATA/runtime.sqlite` (APSW, WAL, fsync at commit).

Tables:
  deployments(version, created, config, manifest, python, sha256)  one row per deploy;
      the bundle itself is the opaque file `DATA/deployments/<version>.bundle`.
  namespaces(key, class_name, secret, created, deleted)  one row per class ever
      created; `secret` makes its ids (see `stateroom._ids`). A rename changes
      `class_name` and keeps key and secret (so ids and files stay); a delete sets
      `deleted` and clears `class_name`.
  migrations(tag, deployment, applied)  each tag applied once.
  names(ns_key, id, name)  the name an id was first used with.
  alarms(ns_key, id, time, retry)  the alarm index (see `alarms.py`).
  meters(minute, ns_key, id, span, ..., byte_s)  billing meters per object: one row
      per minute for the last 7 days, rolled up to one per hour, and after 400 days
      to one per day (`meters.py` explains the roll-up and why billing stays exact).

Only the supervisor opens this file, and only from its trio thread; every call is
short.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import apsw

SCHEMA = """
CREATE TABLE IF NOT EXISTS deployments(
    version INTEGER PRIMARY KEY, created REAL NOT NULL, config TEXT NOT NULL,
    manifest TEXT NOT NULL, python TEXT NOT NULL, sha256 TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS namespaces(
    key INTEGER PRIMARY KEY, class_name TEXT UNIQUE, secret BLOB NOT NULL,
    created REAL NOT NULL, deleted REAL);
CREATE TABLE IF NOT EXISTS migrations(
    tag TEXT PRIMARY KEY, deployment INTEGER NOT NULL, applied REAL NOT NULL);
CREATE TABLE IF NOT EXISTS names(
    ns_key INTEGER NOT NULL, id TEXT NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY(ns_key, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alarms(
    ns_key INTEGER NOT NULL, id TEXT NOT NULL, time INTEGER NOT NULL,
    retry INTEGER NOT NULL DEFAULT 0, scheduled INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(ns_key, id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alarms_by_time ON alarms(time);
CREATE TABLE IF NOT EXISTS meters(
    minute INTEGER NOT NULL, ns_key INTEGER NOT NULL, id TEXT NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0, ws_messages_in INTEGER NOT NULL DEFAULT 0,
    cpu_ms REAL NOT NULL DEFAULT 0, active_s REAL NOT NULL DEFAULT 0,
    rows_read INTEGER NOT NULL DEFAULT 0, rows_written INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    span INTEGER NOT NULL DEFAULT 1, byte_s REAL,
    PRIMARY KEY(minute, ns_key, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS settings(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class RuntimeDB:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = apsw.Connection(str(path))
        self.conn.setbusytimeout(2000)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        with self.conn:
            self.conn.execute(SCHEMA)
            self._upgrade()

    def _upgrade(self) -> None:
        """Bring a runtime database made by an earlier version up to `SCHEMA`."""
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(meters)")}
        if "span" not in columns:
            # Meter rows of earlier versions are all minute rows.
            self.conn.execute(
                "ALTER TABLE meters ADD COLUMN span INTEGER NOT NULL DEFAULT 1;"
                "ALTER TABLE meters ADD COLUMN byte_s REAL"
            )

    def setting(self, key: str) -> str | None:
        for (value,) in self.conn.execute("SELECT value FROM settings WHERE key=?", (key,)):
            return str(value)
        return None

    def set_setting(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO settings(key, value) VALUES(?, ?)", (key, value))

    def close(self) -> None:
        self.conn.close()

    def transaction(self) -> Any:
        """`with db.transaction():` — one atomic, durable unit."""
        return self.conn

    # ---------------------------------------------------------------- deployments

    def latest_deployment(self) -> dict[str, Any] | None:
        for row in self.conn.execute(
            "SELECT version, created, config, manifest, python, sha256, note FROM deployments"
            " ORDER BY version DESC LIMIT 1"
        ):
            return self._dep_row(row)
        return None

    def deployment(self, version: int) -> dict[str, Any] | None:
        for row in self.conn.execute(
            "SELECT version, created, config, manifest, python, sha256, note FROM deployments"
            " WHERE version=?",
            (version,),
        ):
            return self._dep_row(row)
        return None

    def deployments(self) -> list[dict[str, Any]]:
        return [
            self._dep_row(r)
            for r in self.conn.execute(
                "SELECT version, created, config, manifest, python, sha256, note FROM deployments"
                " ORDER BY version"
            )
        ]

    @staticmethod
    def _dep_row(row: tuple) -> dict[str, Any]:
        version, created, config, manifest, python, sha, note = row
        return {
            "version": version,
            "created": created,
            "config": json.loads(config),
            "manifest": json.loads(manifest),
            "python": python,
            "sha256": sha,
            "note": note,
        }

    def next_version(self) -> int:
        for (v,) in self.conn.execute("SELECT coalesce(max(version), 0) + 1 FROM deployments"):
            return int(v)
        return 1

    def insert_deployment(
        self, version: int, config: dict, manifest: dict, python: str, sha: str, note: str = ""
    ) -> None:
        self.conn.execute(
            "INSERT INTO deployments(version, created, config, manifest, python, sha256, note)"
            " VALUES(?,?,?,?,?,?,?)",
            (version, time.time(), json.dumps(config), json.dumps(manifest), python, sha, note),
        )

    # ---------------------------------------------------------------- namespaces

    def namespaces(self) -> dict[str, tuple[int, bytes]]:
        """Live classes: class name -> (key, secret)."""
        return {
            c: (k, s)
            for k, c, s in self.conn.execute(
                "SELECT key, class_name, secret FROM namespaces WHERE deleted IS NULL"
            )
        }

    def applied_tags(self) -> set[str]:
        return {t for (t,) in self.conn.execute("SELECT tag FROM migrations")}

    # ---------------------------------------------------------------- names

    def record_name(self, ns_key: int, object_id: str, name: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO names(ns_key, id, name) VALUES(?,?,?)", (ns_key, object_id, name)
        )

    def name_of(self, ns_key: int, object_id: str) -> str | None:
        for (n,) in self.conn.execute(
            "SELECT name FROM names WHERE ns_key=? AND id=?", (ns_key, object_id)
        ):
            return n
        return None

    def names(self, ns_key: int) -> dict[str, str]:
        return dict(self.conn.execute("SELECT id, name FROM names WHERE ns_key=?", (ns_key,)))
