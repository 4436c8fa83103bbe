"""Fault injection in the worker (SPEC §13): crash points armed per object.

A fault is armed for one (point, class, id) with either a count K >= 1 (crash the
next K times the point is reached for that object) or a probability p < 1 (crash
each time with probability p, until disarmed). Points are reached by the code
that owns each phase: `before_commit` / `after_commit` by the catalog's commit,
`before_reply` by `Worker.deliver` once an event's reply is ready (its writes are
durable, so the output gate is open), `during_alarm` by the alarm runner while the
handler runs, `during_socket_delivery` by the socket registry while a WebSocket
event is delivered.

Crashing is `os._exit(70)`: no cleanup, no commit, no reply, exactly like a
`kill -9` at that line, except that first the worker hands the supervisor its last
words: every frame already queued (notably `Committed`, so the supervisor knows
whether the event may have made a durable write) and `FaultFired`, which lets the
supervisor count the crash against the fault and re-arm what is left of it in the
replacement worker (`stateroom.supervisor.faults`).

Faults exist only when the runtime runs with `--fault-injection`: the supervisor
refuses the route otherwise, and this table stays empty, so `reach` is one dict
lookup on an empty dict.

Invariant: a count entry is removed when it reaches zero; probability entries stay
until disarmed (`arm(..., 0)`).
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

from stateroom._protocol import FAULT_POINTS, FaultFired, Target

__all__ = ["FAULT_EXIT_CODE", "FaultTable"]

# Exit status of a worker that crashed at an armed fault point.
FAULT_EXIT_CODE = 70


class FaultTable:
    """The armed crash points of one worker."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # (point, class name, id) -> remaining count (>= 1) or probability (< 1).
        self.armed: dict[tuple[str, str, str], float] = {}

    def arm(self, point: str, target: Target, times: float) -> None:
        """Arm `point` for `target`: K >= 1 crashes, or probability < 1; 0 disarms."""
        if point not in FAULT_POINTS:
            raise ValueError(f"unknown fault point {point!r}; one of {list(FAULT_POINTS)}")
        if isinstance(times, bool) or not isinstance(times, (int, float)) or times < 0:
            raise ValueError("times must be a count >= 1 or a probability below 1")
        key = (point, target.class_name, target.id)
        if times == 0:
            self.armed.pop(key, None)
        else:
            self.armed[key] = float(times)

    def reach(self, point: str, host: Any) -> None:
        """Called by the runtime at `point` for `host`'s object: crash if armed."""
        if not self.armed:
            return
        target = host.target
        key = (point, target.class_name, target.id)
        n = self.armed.get(key)
        if n is None:
            return
        if n >= 1:
            if n < 2:
                del self.armed[key]
            else:
                self.armed[key] = n - 1
        elif random.random() >= n:
            return
        self.crash(point, target)

    def crash(self, point: str, target: Target) -> None:
        """Exit now, after handing the supervisor every queued frame and `FaultFired`."""
        worker = self.worker
        worker.log(f"fault injection: crashing at {point} for {target.id[:12]}")
        conn = worker.conn
        try:
            conn.send(FaultFired(point, Target(target.class_name, target.id)))
            conn.flush_now(timeout=2.0)
        except Exception:  # noqa: BLE001 - dying anyway; the exit code tells the story
            pass
        sys.stderr.flush()
        os._exit(FAULT_EXIT_CODE)
