"""A framed, coalescing message connection over a trio socket stream (shared by both sides).

`FramedConnection.send(msg)` never blocks the caller on I/O: it queues the frame.
Once per pass of the trio scheduler, just before trio polls for I/O, a trio
instrument (`_Flusher.before_io_wait`, one per run) writes every connection's queued
frames with one non-blocking write each, so a burst of sends coalesces into one
syscall and costs no task switch. Only when the kernel does not take everything (a
full socket buffer) does the connection's writer task (`serve_writer`) take over:
it waits until the socket is writable and writes the rest, and the instrument
leaves the connection alone until the writer has drained it. A frame sent outside
any task (from another instrument's `before_io_wait`, maybe after this pass's
flush) is written at once. The reader (`serve_reader`) reads the socket directly
into a reused buffer and hands each decoded message to a callback in arrival order.

`flush_now()` writes every queued frame synchronously (blocking the thread until the
kernel took the bytes). A worker calls it before an irreversible step whose
announcement must survive a `kill -9` right after it: `Committed` before a COMMIT
when it has no commit log, the last words before a fault-injection exit. Bytes
handed to the kernel reach the peer even if the process dies next.
`send_later(msg)` queues a frame that arranges no write of its own: it leaves with
the next frame written.

Invariant: bytes leave in `send` order. Every writer (the instrument, the writer
task, `flush_now`) continues from the frame being written (`_head`, written up to
`_head_pos`), kept on the connection, never in a local, and only one of them runs at
a time (they are all synchronous between the writes, on the trio thread).

Invariant: nothing is written once `closed` is set, and `closed` is set before the
socket is closed (so a reused file descriptor number is never written to).

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
import trio.lowlevel

from ._protocol import FrameReader, encode_frame

__all__ = ["FramedConnection"]

# Bytes read from the socket at most per read.
READ_CHUNK = 256 * 1024


class _Flusher(trio.abc.Instrument):
    """Writes every connection's queued frames once per scheduler pass (see module doc).

    Defines only `before_io_wait`: trio calls just the hooks an instrument defines.
    """

    def __init__(self) -> None:
        # Connections with frames queued since the last pass, each at most once
        # (`FramedConnection._queued`). Emptied by every pass.
        self.dirty: list[FramedConnection] = []
        self.token = trio.lowlevel.current_trio_token()

    def before_io_wait(self, timeout: float) -> None:
        if not self.dirty:
            return
        dirty, self.dirty = self.dirty, []
        for conn in dirty:
            conn._queued = False
            conn._flush_from_loop()


def _in_task() -> bool:
    """True inside a trio task; False in an instrument hook (between task steps)."""
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


_FLUSHER: trio.lowlevel.RunVar[_Flusher] = trio.lowlevel.RunVar("stateroom_flusher")


def _flusher() -> _Flusher:
    """This trio run's flusher, installed at first use."""
    try:
        return _FLUSHER.get()
    except LookupError:
        flusher = _Flusher()
        trio.lowlevel.add_instrument(flusher)
        _FLUSHER.set(flusher)
        return flusher


class FramedConnection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        # Frames waiting to be written; swapped out whole on each write.
        self._out: list[bytes] = []
        # The batch being written and how much of it the kernel has taken.
        self._head = b""
        self._head_pos = 0
        # Set to wake the writer task: by `send` until the writer task started (no
        # flusher yet), afterwards by the flusher when the kernel refused bytes.
        self._wakeup = trio.Event()
        # This run's flusher, once the writer task started; None before.
        self._flusher: _Flusher | None = None
        # True while this connection is in the flusher's dirty list.
        self._queued = False
        # True while the writer task owns the writing (the kernel refused bytes);
        # the flusher skips the connection meanwhile.
        # Invariant: not self._writing implies the writer task waits on `_wakeup`
        # or is about to run after the flusher set it.
        self._writing = False
        # Set once the connection is unusable (EOF, error, or close()).
        self.closed = False

    def send(self, msg: Any) -> None:
        """Queue one message. Raises `trio.ClosedResourceError` after close."""
        if self.closed:
            raise trio.ClosedResourceError("connection closed")
        self._out.append(encode_frame(msg))
        flusher = self._flusher
        if flusher is None:
            self._wakeup.set()
        elif not _in_task():
            # From another instrument's `before_io_wait` (the worker's committer
            # releases replies there), possibly after this pass's flush: write now,
            # or the frame would wait for the next pass.
            self._flush_from_loop()
        elif not self._queued:
            self._queued = True
            flusher.dirty.append(self)

    def send_later(self, msg: Any) -> None:
        """Queue one message without arranging a write: it leaves with the next frame.

        For a message the peer needs no sooner than what follows it on the
        connection (the worker's `Committed`, which only has to precede its `Reply`
        once the commit log covers a crash in between). Raises like `send`.
        """
        if self.closed:
            raise trio.ClosedResourceError("connection closed")
        self._out.append(encode_frame(msg))

    def _fd(self) -> int:
        # -1 once the socket is closed.
        return self.stream.socket.fileno()

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

    def _flush_from_loop(self) -> None:
        """The flusher's write: never blocks, never raises (an instrument must not)."""
        if self.closed or self._writing:
            return
        try:
            fd = self._fd()
            if fd < 0:
                self.closed = True
                return
            while self._write_some(fd):
                pass
        except BlockingIOError:
            # The writer task finishes the job once the socket has room. The wake-up
            # goes through trio's entry queue, which also ends the I/O wait that
            # follows this hook (a task rescheduled here would wait for it).
            self._writing = True
            assert self._flusher is not None
            self._flusher.token.run_sync_soon(self._wakeup.set)
        except Exception:  # noqa: BLE001 - a broken socket: the reader sees EOF
            self.closed = True

    async def serve_writer(self) -> None:
        """Write what the flusher could not (see module doc); returns once broken."""
        fd = self._fd()
        self._flusher = _flusher()
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                self._writing = True
                while True:
                    if self.closed:
                        return
                    try:
                        if not self._write_some(fd):
                            break
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(fd)
                self._writing = False
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
        """Deliver messages until EOF; returns on EOF or a broken stream.

        After handing over what one read brought, the reader yields once and then
        waits for readability before it reads again, so the tasks those messages
        woke have run before the next messages are handed over (what follows a
        message on the wire may depend on what the tasks it woke do, and a reply
        can leave before the next task runs). It also keeps a busy connection from
        starving the other tasks.
        """
        reader = FrameReader()
        buf = bytearray(READ_CHUNK)
        try:
            with memoryview(buf) as view:
                while True:
                    fd = self._fd()  # -1 once closed: readv raises OSError
                    try:
                        n = os.readv(fd, [buf])
                    except BlockingIOError:
                        await trio.lowlevel.wait_readable(fd)
                        continue
                    if not n:
                        break
                    for msg in reader.feed(view[:n]):
                        on_message(msg)
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    fd = self._fd()
                    if fd < 0:
                        break
                    await trio.lowlevel.wait_readable(fd)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.closed = True

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()
