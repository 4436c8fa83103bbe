"""Fencing: one owner for every object file, also across supervisor lifetimes.

Within one supervisor, `workers.py` fences by reaping: a worker slot is restarted
only after its old process has been waited for, so the old owner of a shard is
provably dead before the new one serves it. This module extends that to the data
folder as a whole:

* `lock_data_folder(data)` takes an exclusive `flock` on `DATA/supervisor.lock`
  for the supervisor's lifetime. The kernel releases it when the process dies
  (`kill -9` included), so a second supervisor on the same folder is refused
  with a clear message while the first lives, and starts normally after.
* `WorkerRegistry` records every worker the supervisor starts (pid and process
  start time) in `DATA/workers.pids`. A supervisor starting on the folder first
  kills (`SIGKILL`) and waits out every recorded worker that is still alive:
  workers of a dead supervisor normally exit by themselves within milliseconds
  (their supervisor socket closes), but one stuck in a long C call cannot notice,
  and it must not hold object files while new workers start.

Invariant: when `WorkerRegistry.reap_leftovers` returns, no process recorded by an
earlier supervisor of this folder is alive. The process start time guards against
pid reuse: a recorded pid now belonging to another process is left alone.
"""

from __future__ import annotations

import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

__all__ = ["DataFolderBusy", "WorkerRegistry", "lock_data_folder"]


class DataFolderBusy(RuntimeError):
    """Another live supervisor holds the data folder."""


def lock_data_folder(data: Path) -> Any:
    """Hold the folder's supervisor lock; returns the open file (keep it referenced).

    Raises `DataFolderBusy` if another live supervisor holds it.
    """
    data.mkdir(parents=True, exist_ok=True)
    path = data / "supervisor.lock"
    f = open(path, "a+")  # noqa: SIM115 - held open for the process's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise DataFolderBusy(
            f"the data folder {data} is in use by a running supervisor (pid {holder});"
            " stop it first or pass another --data"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


class WorkerRegistry:
    """The workers this supervisor started, on disk, for the next supervisor."""

    def __init__(self, data: Path) -> None:
        self.path = Path(data) / "workers.pids"
        # slot index -> (pid, process start time)
        self._workers: dict[int, tuple[int, float]] = {}

    def reap_leftovers(self, timeout: float = 10.0) -> list[int]:
        """Kill and wait out workers recorded by an earlier supervisor; returns their pids."""
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return []
        victims: list[psutil.Process] = []
        for line in lines:
            try:
                _index, pid_s, created_s = line.split()
                pid, created = int(pid_s), float(created_s)
            except ValueError:
                continue
            try:
                proc = psutil.Process(pid)
                if abs(proc.create_time() - created) > 0.01:
                    continue  # the pid now belongs to someone else
                proc.send_signal(signal.SIGKILL)
                victims.append(proc)
            except psutil.Error:
                continue
        killed = [p.pid for p in victims]
        deadline = time.monotonic() + timeout
        while victims and time.monotonic() < deadline:
            victims = [p for p in victims if _alive(p)]
            if victims:
                time.sleep(0.005)
        self._write()
        return killed

    def record(self, index: int, pid: int) -> None:
        """Note the process now running slot `index`."""
        try:
            created = psutil.Process(pid).create_time()
        except psutil.Error:
            return
        self._workers[index] = (pid, created)
        self._write()

    def _write(self) -> None:
        text = "".join(
            f"{i} {pid} {created!r}\n" for i, (pid, created) in sorted(self._workers.items())
        )
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError:
            pass


def _alive(proc: psutil.Process) -> bool:
    """Running (a zombie is dead: it holds no files, only an exit status)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
