"""A framed, coalescing message connection over a trio stream (shared by both sides).

`FramedConnection.send(msg)` never blocks the caller on I/O: frames are queued and
a single writer task drains *every* queued frame into one `send_all`, so bursts
coalesce into few syscalls. The reader task decodes frames and hands each message
to a callback in arrival order.

This lives in the sdk because both the supervisor and the worker speak it; it
imports trio but nothing of either side.
"""

from __future__ import annotations

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
        self._wakeup = trio.Event()
        # Set once the connection is unusable (EOF, error, or close()).
        self.closed = False

    def send(self, msg: Any) -> None:
        """Queue one message. Raises `trio.ClosedResourceError` after close."""
        if self.closed:
            raise trio.ClosedResourceError("connection closed")
        self._out.append(encode_frame(msg))
        self._wakeup.set()

    async def serve_writer(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                while self._out:
                    batch, self._out = self._out, []
                    await self.stream.send_all(b"".join(batch) if len(batch) > 1 else batch[0])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.closed = True

    async def serve_reader(self, on_message: Callable[[Any], None]) -> None:
        """Deliver messages until EOF; returns on EOF or a broken stream."""
        reader = FrameReader()
        try:
            while True:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    break
                for msg in reader.feed(data):
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
