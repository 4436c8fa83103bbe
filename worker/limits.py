"""The CPU limit per event (SPEC §8), and the worker's own dead-man switches.

An event's CPU time is the main thread's CPU time spent in the event's own *task
steps* (the synchronous stretches between two awaits): `Metered` wraps the event's
coroutine and reads the thread CPU clock around every step, so interleaved events
are each charged only for their own work. A step that blocks the loop is also
measured in wall time: a handler sleeping synchronously (`time.sleep`) for longer
than the limit stalls every object of the worker just as a runaway loop does.

A runaway event is stopped in three tiers, gentlest first:

1. A step *ends* with the event over its budget (a loop that awaits): the object
   is reset (`ObjectHost.reset`: in-flight events fail with `ObjectResetError`,
   their cancel scopes are cancelled) and the coroutine is handed back to trio,
   which unwinds it with `Cancelled` through its normal abort path.
2. A step *runs on* past the budget (a loop that never awaits): the watchdog
   thread sends `SIGNAL` to the main thread; the Python-level handler runs there,
   between two bytecodes of that step, and raises `CpuLimitExceeded` (a
   `BaseException`, so `except Exception` in user code does not swallow it). It
   unwinds the event's code; the object is reset and the event fails with
   `ObjectResetError`.
3. The step ignores that (a C call that holds the GIL, code that swallows
   `BaseException`): `grace` seconds later the watchdog thread exits the process.
   If the watchdog cannot run at all (the GIL is held), the kernel does it: the
   watchdog keeps `RLIMIT_CPU` at the process's CPU time plus budget plus grace,
   so a process that burns that much CPU without the watchdog moving the limit
   gets `SIGXCPU`, which terminates it. The supervisor restarts the worker; other
   workers and their shards are unaffected.

The watchdog also exits the process when the trio loop makes no progress for
budget + grace outside any event (a runaway `Default` or `wait_until` task), and
when the supervisor is gone (parent pid changed) even if the main thread is stuck,
so orphans never linger.

Invariant: the signal handler raises only while `_Step.open` is true for the step
it measures. `open` is set and cleared by the main thread right around
`coro.send` / `coro.throw`, inside the try block that catches the exception, so
`CpuLimitExceeded` can land only in the event's own code (or in the wrapper just
around it, where it is caught). Everything the watchdog thread reads is written
by the main thread as single attribute stores (atomic under the GIL); the thread
only ever decides to *ask* (a signal) or to exit.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Coroutine, Generator
from typing import Any

import trio

from stateroom._errors import ObjectResetError

from .meters import ENABLED as METERS

__all__ = ["CpuLimitExceeded", "Metered", "Watchdog", "LIMIT_EXIT_CODE", "SIGNAL"]

# The signal the watchdog sends to interrupt a runaway step.
SIGNAL = signal.SIGUSR2
# Exit status when the watchdog gives up on a step (tier 3) or a stalled loop.
LIMIT_EXIT_CODE = 71


class _NoCounters:
    """Stands in for an object's counters while meters are off."""

    __slots__ = ("cpu_ms",)

    def __init__(self) -> None:
        self.cpu_ms = 0.0


_NO_COUNTERS = _NoCounters()


class CpuLimitExceeded(BaseException):
    """Raised inside an event's code that ran past the CPU limit (tier 2)."""


class _Step:
    """CPU accounting of one event, and the step it is running (if any)."""

    __slots__ = ("host", "used", "cpu0", "wall0", "open", "seq", "over", "reset_done", "why")

    def __init__(self, host: Any) -> None:
        self.host = host
        # Thread CPU seconds of the event's finished steps.
        self.used = 0.0
        # Thread CPU clock and monotonic clock when the current step began.
        self.cpu0 = 0.0
        self.wall0 = 0.0
        # True exactly while the main thread runs the event's code (see invariant).
        self.open = False
        # Bumped at every step: the watchdog's "same step as before?" check.
        self.seq = 0
        # True once the event went over the limit (set by the handler or the wrapper).
        self.over = False
        # True once the object was reset for it (reset once, even if code lingers).
        self.reset_done = False
        # What went over, for the error and the log.
        self.why = ""


class Watchdog:
    """Per-worker CPU limit enforcement (see the module docstring)."""

    def __init__(self, worker: Any, cpu_limit: float, grace: float | None = None) -> None:
        self.worker = worker
        # CPU seconds (and wall seconds of one step) an event may use.
        self.limit = float(cpu_limit)
        # Seconds between asking a step to stop and killing the worker.
        self.grace = float(grace) if grace is not None else min(5.0, max(1.0, self.limit / 4))
        # How often the watchdog thread looks.
        self.tick = max(0.01, min(0.1, self.limit / 10))
        # The event step the main thread is running now, or None.
        self.current: _Step | None = None
        # Monotonic time the trio loop last ran the heartbeat task.
        self.beat = time.monotonic()
        self._main_ident = threading.get_ident()
        self._main_clock = time.pthread_getcpuclockid(self._main_ident)
        self._ppid = os.getppid()
        # RLIMIT_CPU soft limit currently set (seconds), or -1.
        self._rlimit = -1
        self._started = False

    # ------------------------------------------------------------------ setup

    def start(self, nursery: trio.Nursery) -> None:
        """Install the signal handler and start the thread (call from the main thread)."""
        if self._started:
            return
        self._started = True
        signal.signal(SIGNAL, self._on_signal)
        try:
            _soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
            resource.setrlimit(resource.RLIMIT_CORE, (0, hard))  # no core file on SIGXCPU
        except (ValueError, OSError):
            pass
        self._move_rlimit()
        thread = threading.Thread(target=self._watch, name="stateroom-watchdog", daemon=True)
        thread.start()
        nursery.start_soon(self._serve_heartbeat)

    async def _serve_heartbeat(self) -> None:
        period = max(0.05, min(0.5, self.limit / 4))
        while True:
            self.beat = time.monotonic()
            await trio.sleep(period)

    def metered(self, host: Any, coro: Coroutine[Any, Any, Any]) -> Metered:
        """Wrap an event's coroutine so the limit applies to it."""
        return Metered(self, host, coro)

    # ------------------------------------------------------------------ main thread

    def _on_signal(self, signum: int, frame: Any) -> None:
        step = self.current
        if step is None or not step.open:
            return
        cpu = step.used + (time.thread_time() - step.cpu0)
        wall = time.monotonic() - step.wall0
        if cpu > self.limit or wall > self.limit:
            step.over = True
            step.why = f"{cpu:.2f} s of CPU, {wall:.2f} s without yielding"
            raise CpuLimitExceeded(f"the event exceeded the CPU limit of {self.limit:g} s")

    def over_limit(self, step: _Step) -> None:
        """The event of `step` went over: reset its object once (main thread)."""
        step.over = True
        if step.reset_done:
            return
        step.reset_done = True
        host = step.host
        why = step.why or f"{step.used:.2f} s of CPU"
        self.worker.log(
            f"{host.target.class_name} {host.target.id[:12]}: event exceeded the CPU limit"
            f" of {self.limit:g} s ({why}); resetting the object"
        )
        host.reset(f"the event exceeded the CPU limit of {self.limit:g} s ({why})")

    # ------------------------------------------------------------------ watchdog thread

    def _watch(self) -> None:
        flagged: tuple[_Step, int] | None = None
        flagged_at = 0.0
        last_signal = 0.0
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            if os.getppid() != self._ppid:
                self._exit(0, "the supervisor is gone; exiting")
            self._move_rlimit()
            step = self.current
            if step is not None and step.open:
                seq = step.seq
                cpu = step.used + (time.clock_gettime(self._main_clock) - step.cpu0)
                wall = now - step.wall0
                if cpu > self.limit or wall > self.limit:
                    if flagged != (step, seq):
                        flagged, flagged_at = (step, seq), now
                        last_signal = 0.0
                    if now - flagged_at > self.grace:
                        self._exit(
                            LIMIT_EXIT_CODE,
                            f"an event ignored the CPU limit of {self.limit:g} s for"
                            f" {self.grace:g} s more; exiting so the worker restarts",
                        )
                    if now - last_signal >= min(0.5, self.grace / 4):
                        last_signal = now
                        try:
                            signal.pthread_kill(self._main_ident, SIGNAL)
                        except (OSError, ValueError):
                            pass
                continue
            flagged = None
            if now - self.beat > self.limit + self.grace:
                self._exit(
                    LIMIT_EXIT_CODE,
                    f"the event loop made no progress for {now - self.beat:.1f} s"
                    f" (CPU limit {self.limit:g} s); exiting so the worker restarts",
                )

    def _move_rlimit(self) -> None:
        """Keep RLIMIT_CPU ahead of the process's CPU time (the kernel's backstop)."""
        want = int(math.ceil(time.process_time() + self.limit + self.grace + 2.0))
        if want <= self._rlimit:
            return  # process CPU only grows: the limit only ever moves forward
        try:
            _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
            if hard != resource.RLIM_INFINITY and want > hard:
                return
            resource.setrlimit(resource.RLIMIT_CPU, (want, hard))
            self._rlimit = want
        except (ValueError, OSError):
            pass

    def _exit(self, code: int, message: str) -> None:
        try:
            sys.stderr.write(f"[worker {self.worker.index} pid {os.getpid()}] {message}\n")
            sys.stderr.flush()
        finally:
            os._exit(code)


class Metered:
    """Awaitable running an event's coroutine step by step under the CPU limit.

    Behaves like `await coro` (values, exceptions and trio's traps pass through
    unchanged) except for the limit (see the module docstring).
    """

    __slots__ = ("watchdog", "host", "coro")

    def __init__(self, watchdog: Watchdog, host: Any, coro: Coroutine[Any, Any, Any]) -> None:
        self.watchdog = watchdog
        self.host = host
        self.coro = coro

    def __await__(self) -> Generator[Any, Any, Any]:
        wd = self.watchdog
        step = _Step(self.host)
        try:
            return (yield from self._drive(wd, step))
        except CpuLimitExceeded as exc:
            # Tier 2 (or its tail end): the event's code is unwound and finished.
            wd.over_limit(step)
            raise ObjectResetError(str(exc), retryable=False) from None

    def _drive(self, wd: Watchdog, step: _Step) -> Generator[Any, Any, Any]:
        coro = self.coro
        limit = wd.limit
        # The object's CPU meter (meters.py) reads the same clock readings.
        counters = self.host.counters if METERS else _NO_COUNTERS
        send_value: Any = None
        to_throw: BaseException | None = None
        while True:
            previous = wd.current
            step.seq += 1
            step.wall0 = time.monotonic()
            step.cpu0 = time.thread_time()
            wd.current = step
            try:
                step.open = True
                if to_throw is None:
                    yielded = coro.send(send_value)
                else:
                    yielded = coro.throw(to_throw)
                step.open = False
            except StopIteration as stop:
                step.open = False
                wd.current = previous
                spent = time.thread_time() - step.cpu0
                step.used += spent
                counters.cpu_ms += spent * 1000.0
                if step.over or step.used > limit:
                    raise CpuLimitExceeded(
                        f"the event exceeded the CPU limit of {limit:g} s ({step.used:.2f} s)"
                    ) from None
                return stop.value
            except BaseException:
                step.open = False
                wd.current = previous
                spent = time.thread_time() - step.cpu0
                step.used += spent
                counters.cpu_ms += spent * 1000.0
                raise
            wd.current = previous
            spent = time.thread_time() - step.cpu0
            step.used += spent
            counters.cpu_ms += spent * 1000.0
            if step.over or step.used > limit:
                # Tier 1: reset (cancels the event's scope); trio unwinds the
                # coroutine with Cancelled once it takes this trap.
                wd.over_limit(step)
                if step.used > limit + wd.grace:
                    wd._exit(
                        LIMIT_EXIT_CODE,
                        f"an event kept running {step.used:.1f} s after its object was reset"
                        " for exceeding the CPU limit; exiting so the worker restarts",
                    )
            to_throw = None
            try:
                send_value = yield yielded
            except BaseException as exc:  # thrown in by trio (Cancelled, ...)
                to_throw, send_value = exc, None
