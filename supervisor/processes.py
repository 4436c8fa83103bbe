"""Process sampling: CPU and memory of the supervisor and of every worker (psutil).

`/_stateroom/v1/processes` (SPEC §12), `stateroom top`, the dashboard and the
Prometheus metrics read the figures of each process from here:

* `cpu_seconds`: user + system CPU time of the process since it started, read
  fresh at every call (two small reads of /proc), so it is exact and monotonic.
* `rss_bytes`: resident set size, read fresh at every call.
* `cpu_percent`: CPU time used over the last sampling window divided by that
  window's wall time, × 100 (one fully busy core = 100; a process using several
  threads may exceed 100, as with `top`). A percentage needs two readings, so a
  sampler task takes one reading of every process each `INTERVAL` seconds and the
  API serves the last window's value; a process younger than one window reports
  its average since it started.

Invariant: one `psutil.Process` per live pid is kept (keyed by pid and process
creation time, so a reused pid starts afresh); pids that are gone are dropped at
the next round. One round for 16 workers costs well under a millisecond of the
supervisor's thread (`bench/meters.py` measures it).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import psutil
import trio

__all__ = ["ProcessSampler", "Sample"]

INTERVAL = 1.0


@dataclasses.dataclass(frozen=True)
class Sample:
    cpu_percent: float
    cpu_seconds: float
    rss_bytes: int


_ZERO = Sample(0.0, 0.0, 0)


class _Tracked:
    __slots__ = ("proc", "created", "cpu", "wall", "percent")

    def __init__(self, proc: psutil.Process, created: float) -> None:
        self.proc = proc
        # Process creation time (distinguishes a reused pid).
        self.created = created
        # CPU seconds and monotonic wall time at the last sampler round.
        self.cpu = 0.0
        self.wall = 0.0
        # cpu_percent over the last completed window (None before the first one).
        self.percent: float | None = None


class ProcessSampler:
    """Keeps the latest CPU% of every runtime process; reads the rest on demand."""

    def __init__(self, pids: Any = None) -> None:
        # Callable returning the pids to sample each round (supervisor + workers).
        self._pids = pids or (lambda: [os.getpid()])
        # pid -> tracked process.
        self._tracked: dict[int, _Tracked] = {}

    def _track(self, pid: int) -> _Tracked | None:
        t = self._tracked.get(pid)
        try:
            if t is not None:
                return t
            proc = psutil.Process(pid)
            t = _Tracked(proc, proc.create_time())
            t.cpu = _cpu(proc)
            t.wall = time.monotonic()
            self._tracked[pid] = t
            return t
        except psutil.Error:
            self._tracked.pop(pid, None)
            return None

    def sample_round(self) -> None:
        """One reading of every process: closes the current CPU% window of each."""
        pids = set(self._pids())
        for pid in list(self._tracked):
            if pid not in pids:
                del self._tracked[pid]
        for pid in pids:
            t = self._track(pid)
            if t is None:
                continue
            try:
                cpu = _cpu(t.proc)
            except psutil.Error:
                del self._tracked[pid]
                continue
            now = time.monotonic()
            dt = now - t.wall
            if dt > 0:
                t.percent = round(max(0.0, cpu - t.cpu) / dt * 100.0, 1)
            t.cpu, t.wall = cpu, now

    def sample(self, pid: int | None) -> Sample:
        """The current figures of `pid` (zeros when it is not running)."""
        if pid is None:
            return _ZERO
        t = self._track(pid)
        if t is None:
            return _ZERO
        try:
            with t.proc.oneshot():
                cpu = _cpu(t.proc)
                rss = int(t.proc.memory_info().rss)
        except psutil.Error:
            self._tracked.pop(pid, None)
            return _ZERO
        percent = t.percent
        if percent is None:
            # Younger than one window: its average since it started.
            age = max(1e-3, time.time() - t.created)
            percent = round(cpu / age * 100.0, 1)
        return Sample(percent, round(cpu, 3), rss)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run a sampling round every `INTERVAL` seconds, forever."""
        self.sample_round()
        task_status.started()
        while True:
            await trio.sleep(INTERVAL)
            self.sample_round()


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)
