"""Giving memory back to the system once objects hibernate or are evicted.

Dropping an instance frees its Python objects, but a Python process seldom returns
the pages: pymalloc keeps a 1 MiB arena as long as any object in it lives (and the
few long-lived objects allocated while many objects were active pin most arenas),
and glibc keeps freed heap pages for reuse. So after 1,000 chat rooms hibernated a
worker stayed ~35 % over its baseline RSS (bench/chat.py), although every instance
was gone.

Hence two measures:

* workers run on the C allocator: the supervisor starts them with
  `PYTHONMALLOC=malloc` unless the environment already sets `PYTHONMALLOC`;
* after an eviction sweep that dropped objects, the worker collects reference
  cycles (an instance, its host and its socket handles form some) and asks glibc
  to release free pages anywhere in its heap (`malloc_trim(0)`, which madvises them
  away). With both, the worker returns to within a few percent of its baseline.

Invariants: releasing is advisory (a no-op where libc has no `malloc_trim`); it runs
at most once per `MIN_INTERVAL` seconds, and only when something was evicted since
the last time, so a busy worker never pays for it on every sweep.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

MIN_INTERVAL = 2.0


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


class MemoryReleaser:
    """Collects cycles and trims the C heap after evictions, rate-limited."""

    def __init__(self) -> None:
        self._trim = _load_malloc_trim()
        # Objects evicted since the last release.
        self._evicted = 0
        # time.monotonic() of the last release.
        self._last = 0.0
        # Number of releases done (diagnostics).
        self.releases = 0

    def note_evicted(self, count: int = 1) -> None:
        self._evicted += count

    def maybe_release(self) -> bool:
        """Release now if objects were evicted and the last release is old enough."""
        if not self._evicted:
            return False
        now = time.monotonic()
        if now - self._last < MIN_INTERVAL:
            return False
        self._evicted = 0
        self._last = now
        gc.collect()
        if self._trim is not None:
            self._trim(0)
        self.releases += 1
        return True


__all__ = ["MemoryReleaser"]
