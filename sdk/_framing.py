"""A framed, coalescing message connection over a trio stream (shared by both sides).

`FramedConnection.send(msg)` never blocks the caller on I/O: frames are queued and
a single writer task drains *every* queued frame into one write, so bursts
coalesce into few syscalls. The reader task decodes frames and hands each message
to a callback in arrival order.

`flush_now()` writes every queued frame synchronously (blocking the thread until the
kernel took the bytes). A worker calls it before an irreversible step whose
announcement must survive a `kill -9` right after it: `Committed` before a COMMIT,
the last words before a fault-injection exit. Bytes handed to the kernel reach the
peer even if the process dies next.

Invariant: bytes leave in `send` order. The writer keeps the frame it is writing
(`_head`, written up to `_head_pos`) on the connection, never in a local, so
`flush_now` continues exactly where the writer stopped.

This lives in the sdk because both the supervisor and the worker speak it; it
imports trio but nothing of either side.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable
from typing import Any

import trio

from ._protocol import FrameReader, encode_frame

__all__ = ["FramedConnection"]


class FramedConnection:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        # Frames waiting for the writer; swapped out whole on each write.
        self._out: list[bytes] = []
        # The batch being written and how much of it the kernel has taken.
        self._head = b""
        self._head_pos = 0
        self._wakeup = trio.Event()
        # Set once the connection is unusable (EOF, error, or close()).
        self.closed = False

    def send(self, msg: Any) -> None:
        """Queue one message. Raises `trio.ClosedResourceError` after close."""
        if self.closed:
            raise trio.ClosedResourceError("connection closed")
        self._out.append(encode_frame(msg))
        self._wakeup.set()

    def _fd(self) -> int:
        sock = getattr(self.stream, "socket", None)
        return sock.fileno() if sock is not None else -1

    def _write_some(self, fd: int) -> bool:
        """Write what the kernel takes without blocking; False once nothing is left."""
        if self._head_pos >= len(self._head):
            if not self._out:
                self._head, self._head_pos = b"", 0
                return False
            batch, self._out = self._out, []
            self._head = b"".join(batch) if len(batch) > 1 else batch[0]
            self._head_pos = 0
        with memoryview(self._head) as view:
            self._head_pos += os.write(fd, view[self._head_pos :])
        return True

    async def serve_writer(self) -> None:
        fd = self._fd()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while True:
                    try:
                        if not self._write_some(fd):
                            break
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(fd)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.closed = True

    def flush_now(self, timeout: float = 5.0) -> None:
        """Hand every queued frame to the kernel before returning (blocks the thread).

        Gives up silently after `timeout` seconds or if the connection is broken; the
        writer task then carries on from where this stopped.
        """
        fd = self._fd()
        if fd < 0 or self.closed:
            return
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if not self._write_some(fd):
                        return
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    select.select([], [fd], [], left)
        except OSError:
            self.closed = True

    async def serve_reader(self, on_message: Callable[[Any], None]) -> None:
        """Deliver messages until EOF; returns on EOF or a broken stream."""
        reader = FrameReader()
        try:
            while True:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    break
                for msg in reader.feed(bytes(data)):
                    on_message(msg)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.closed = True

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()
