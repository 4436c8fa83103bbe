"""Giving memory back to the system once objects hibernate or are evicted.

Dropping an instance frees its Python objects, but a Python process seldom returns
the pages: pymalloc keeps a 1 MiB arena as long as any object in it lives (and the
few long-lived objects allocated while many objects were active pin most arenas),
and glibc keeps freed heap pages for reuse. So after 1,000 chat rooms hibernated a
worker stayed ~35 % over its baseline RSS (bench/chat.py), although every instance
was gone.

Hence three measures:

* workers run on the C allocator: the supervisor starts them with
  `PYTHONMALLOC=malloc` unless the environment already sets `PYTHONMALLOC`;
* the worker pins glibc's mmap threshold at 128 KiB (`mallopt`). Left dynamic, the
  threshold rises after the first large buffer is freed, and from then on large
  transient buffers (a batch of socket events, a restore of a room's sockets) are
  carved from the heap, which they fragment for good;
* after an eviction sweep that dropped objects, the worker collects reference
  cycles (an instance, its host and its socket handles form some) and asks glibc
  to release free pages anywhere in its heap (`malloc_trim(0)`, which madvises them
  away).

Measured (20,000 sockets over 1,000 rooms, 2 workers): pymalloc alone leaves the
workers +23 % over their baseline once the rooms hibernated, the C allocator with
trimming +13 %, all of the above +3 to +6 %.

Invariants: all of this is advisory (a no-op where libc lacks `mallopt` or
`malloc_trim`); releasing runs at most once per `MIN_INTERVAL` seconds, only when
something was evicted since the last time (plus one trailing release), so a busy
worker never pays for it on every sweep.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

MIN_INTERVAL = 2.0
# glibc's mallopt parameter number for the mmap threshold, and the value pinned.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _load_malloc_trim(libc: ctypes.CDLL | None) -> Callable[[int], int] | None:
    fn = getattr(libc, "malloc_trim", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


def pin_mmap_threshold(libc: ctypes.CDLL | None) -> bool:
    """Fix the mmap threshold (and so stop glibc from raising it); True if it took."""
    fn = getattr(libc, "mallopt", None)
    if fn is None:
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return bool(fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


class MemoryReleaser:
    """Collects cycles and trims the C heap after evictions, rate-limited."""

    def __init__(self) -> None:
        libc = _libc()
        self.mmap_threshold_pinned = pin_mmap_threshold(libc)
        self._trim = _load_malloc_trim(libc)
        # Objects evicted since the last release.
        self._evicted = 0
        # time.monotonic() of the last release.
        self._last = 0.0
        # True when the last release was for evictions: one more follows.
        self._trailing = False
        # Number of releases done (diagnostics).
        self.releases = 0

    def note_evicted(self, count: int = 1) -> None:
        self._evicted += count

    def maybe_release(self) -> bool:
        """Release now if objects were evicted and the last release is old enough.

        One more release follows the last eviction by `MIN_INTERVAL`: what the
        evicted objects still held when they went (meter rows not yet reported,
        buffers of their last events) is freed by then.
        """
        if not self._evicted and not self._trailing:
            return False
        now = time.monotonic()
        if now - self._last < MIN_INTERVAL:
            return False
        self._trailing = bool(self._evicted)
        self._evicted = 0
        self._last = now
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.releases += 1
        return True


__all__ = ["MemoryReleaser"]
