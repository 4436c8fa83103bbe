"""Facts about object files shared by the supervisor and the worker."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def sqlite_file_bytes(path: str | Path) -> int:
    """Bytes on disk of an SQLite database and its WAL (0 when absent)."""
    total = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(FileNotFoundError):
            total += os.path.getsize(str(path) + suffix)
    return total
