"""Worker limits enforced by the supervisor: memory, and a worker gone silent.

* Memory (SPEC §8): with `--worker-memory-limit BYTES`, every `INTERVAL` seconds the
  supervisor reads each ready worker's resident set size (psutil) and kills a
  worker over the limit (`SIGKILL`); the pool restarts it at once, its in-flight
  calls fail like any crash (`WorkerCrashedError`, retryable unless the call may
  have written), and other workers are untouched. Objects of that worker come
  back on their next event, from their durable state.
* Silence: a ready worker sends `Stats` every second from its event loop. One
  that has sent nothing for `--cpu-limit` + `SILENCE_GRACE_S` seconds is stuck in
  a way its own watchdog could not handle (see `stateroom.worker.limits`: e.g. a C
  call holding the GIL without burning CPU) and is killed the same way.

Invariant: only READY workers are judged, and a kill only ever ends the current
process of a slot; the pool's fencing (reap, then restart) does the rest.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import psutil
import trio

__all__ = ["WorkerLimits", "INTERVAL", "SILENCE_GRACE_S"]

# Seconds between two rounds of checks.
INTERVAL = 0.5
# Seconds of silence, beyond the CPU limit, after which a worker is killed.
SILENCE_GRACE_S = 10.0


class WorkerLimits:
    """Supervisor extension: kills workers over the memory limit or gone silent."""

    def __init__(self, sup: Any) -> None:
        self.sup = sup
        settings = sup.settings
        # RSS bytes above which a worker is restarted (None: no limit).
        self.memory_limit: int | None = settings.worker_memory_limit or None
        grace = float(
            os.environ.get("STATEROOM_SILENCE_GRACE") or SILENCE_GRACE_S
        )  # tests shorten it
        self.silence_s = float(settings.cpu_limit) + grace
        # pid -> psutil.Process, for the current process of every slot.
        self._procs: dict[int, psutil.Process] = {}
        # Kills done, by reason (for logs and tests).
        self.kills = {"memory": 0, "silence": 0}

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(INTERVAL)
            self.check()

    def check(self) -> None:
        from .workers import WorkerState

        pool = self.sup.pool
        now = trio.current_time()
        live = set()
        for w in pool.workers:
            if w.state is not WorkerState.READY or w.pid is None:
                continue
            live.add(w.pid)
            if now - w.last_heard > self.silence_s:
                self._kill(w, "silence", f"sent nothing for {now - w.last_heard:.0f} s")
                continue
            if self.memory_limit is None:
                continue
            rss = self._rss(w.pid)
            if rss > self.memory_limit:
                self._kill(
                    w,
                    "memory",
                    f"uses {rss} bytes of memory, over --worker-memory-limit {self.memory_limit}",
                )
        for pid in list(self._procs):
            if pid not in live:
                del self._procs[pid]

    def _rss(self, pid: int) -> int:
        proc = self._procs.get(pid)
        try:
            if proc is None:
                proc = self._procs[pid] = psutil.Process(pid)
            return int(proc.memory_info().rss)
        except psutil.Error:
            self._procs.pop(pid, None)
            return 0

    def _kill(self, w: Any, reason: str, detail: str) -> None:
        self.kills[reason] += 1
        print(
            f"stateroom: worker {w.index} (pid {w.pid}) {detail}; restarting it",
            file=sys.stderr,
            flush=True,
        )
        process = w.process
        if process is not None and process.returncode is None:
            try:
                process.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
