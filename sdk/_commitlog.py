"""The commit log: which requests a worker was about to commit, readable after it died.

Crash retryability (SPEC §8) needs the supervisor to know, when a worker dies,
which of its in-flight requests may have made a durable write. The worker learns
it at the last moment before each COMMIT. Telling the supervisor over the socket
at that moment means a synchronous write and a wake-up of the supervisor for every
writing request. Instead the two processes share a small memory area: before each
COMMIT the worker stores the request ids in it (plain memory stores, no system
call), and only if the worker dies does the supervisor read it. Memory written to
a shared mapping belongs to the mapping, not to the process, so a `kill -9` right
after the store cannot take it back. The worker still sends `Committed` frames
over the socket, without waiting for them (they travel with its next write), for
requests that stay in flight after their commit.

Layout: a ring of `SLOTS` unsigned 64-bit request ids (0 = empty; request ids
start at 1 and are never reused by a supervisor). The worker writes the slots in
turn; the supervisor, after the worker died, reads them all. A slot is overwritten
only after `SLOTS` later announcements; by then the old request's `Committed` frame
has long reached the supervisor (it left with the worker's next write).

The area is a memfd created by the supervisor per worker process and inherited
by the worker (its descriptor number is passed with `--commit-log`).
"""

from __future__ import annotations

import mmap
import os
import struct

__all__ = ["CommitLog", "SLOTS"]

SLOTS = 8192
_SLOT = struct.Struct("<Q")
SIZE = SLOTS * _SLOT.size


class CommitLog:
    """One worker's commit log (either side)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._next = 0

    @classmethod
    def create(cls) -> CommitLog:
        """A new, zeroed log (supervisor side); its `fd` is inheritable."""
        fd = os.memfd_create("stateroom-commit-log", 0)
        os.ftruncate(fd, SIZE)
        return cls(fd)

    def announce(self, request_id: int) -> None:
        """Record that `request_id` is about to commit (worker side, before the COMMIT)."""
        _SLOT.pack_into(self._map, self._next * _SLOT.size, request_id)
        self._next = (self._next + 1) % SLOTS

    def announced(self) -> set[int]:
        """Request ids in the log (supervisor side, once the worker is dead)."""
        return {rid for (rid,) in _SLOT.iter_unpack(self._map) if rid}

    def close(self) -> None:
        self._map.close()
        try:
            os.close(self.fd)
        except OSError:
            pass
