"""The input gate of one object: closed while an event holds it exclusively.

An object's events normally interleave at non-storage awaits (see `catalog.py`).
`ctx.block_concurrency_while(fn)` and `ctx.storage.transaction(fn)` close the input
gate: the object's runner starts no new event until the holder leaves. The gate is
reentrant for the task that holds it (a transaction inside
`block_concurrency_while`, or nested transactions, do not deadlock), and entering
a free gate does not yield to trio, so entering it is not an await at which the
writes of the current turn could be committed apart from the ones that follow.

Invariants:
  * `owner is None` exactly when the gate is open; then `depth == 0`.
  * `released` is set whenever the gate is open.
"""

from __future__ import annotations

from typing import Any

import trio


class InputGate:
    """A reentrant, task-owned gate with a non-yielding fast path."""

    def __init__(self) -> None:
        # The task holding the gate closed, or None while it is open.
        self.owner: trio.lowlevel.Task | None = None
        # How many times `owner` entered without leaving yet.
        self.depth = 0
        # Set while the gate is open; replaced by a fresh event each time it closes.
        self.released = trio.Event()
        self.released.set()

    def locked(self) -> bool:
        return self.owner is not None

    def held_by_current_task(self) -> bool:
        return self.owner is not None and self.owner is trio.lowlevel.current_task()

    async def wait_open(self) -> None:
        """Return once the gate is open (at once, without yielding, if it is)."""
        while self.owner is not None:
            await self.released.wait()

    async def __aenter__(self) -> InputGate:
        task = trio.lowlevel.current_task()
        if self.owner is task:
            self.depth += 1
            return self
        while self.owner is not None:
            await self.released.wait()
        self.owner = task
        self.depth = 1
        self.released = trio.Event()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.release()

    def release(self) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.owner = None
            self.released.set()
