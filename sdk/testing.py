"""`stateroom.testing`: a pytest plugin that runs a real runtime for your tests.

Registered through the `pytest11` entry point, so it is active once stateroom is
installed. The async fixture `stateroom_runtime` (pytest-trio) starts a real
supervisor with real worker processes on 127.0.0.1, a free port and a temporary
data folder, and stops it afterwards. Configure it with a marker:

    @pytest.mark.stateroom(config="app/stateroom.toml", workers=2,
                           fault_injection=True, hibernate_after=1)
    async def test_counter(stateroom_runtime):
        counter = stateroom_runtime.client.namespace("COUNTER").get_by_name("a")
        assert await counter.increment() == 1

`Runtime` works outside pytest too (benchmarks use it): `async with
open_runtime(tmp_dir, workers=2) as rt: ...`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

from ._client import Client, connect

__all__ = ["Runtime", "open_runtime", "stateroom_runtime"]


def _flag_args(options: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        else:
            args += [flag, str(value)]
    return args


class Runtime:
    """A running supervisor (and its workers) started by the test kit."""

    def __init__(self, data: Path, options: dict[str, Any]) -> None:
        self.data = Path(data)
        self.options = dict(options)
        self.options.setdefault("workers", 2)
        self.process: trio.Process | None = None
        self.url = ""
        self.port = 0
        self.token = "test-token-" + os.urandom(8).hex()
        self.client: Client = None  # type: ignore[assignment]
        self._client_cm: Any = None
        self.output: list[str] = []
        self._nursery: trio.Nursery | None = None
        self._config: str | None = None

    # ---------------------------------------------------------------- process

    async def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        options = dict(self.options)
        port = options.pop("port", self.port or 0)
        cmd = [
            sys.executable,
            "-m",
            "stateroom.supervisor",
            "--data",
            str(self.data),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--token",
            self.token,
            *_flag_args(options),
        ]
        self.process = await trio.lowlevel.open_process(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        ready = trio.Event()
        nursery.start_soon(self._pump, self.process.stdout, ready)
        nursery.start_soon(self._pump, self.process.stderr, None)
        with trio.fail_after(60):
            await ready.wait()
        if not self.url:
            raise RuntimeError("stateroom did not start:\n" + "\n".join(self.output[-40:]))
        self._client_cm = connect(self.url, self.token)
        self.client = await self._client_cm.__aenter__()

    async def _pump(self, pipe: Any, ready: trio.Event | None) -> None:
        """Collect one output pipe; on stdout, spot the listening line."""
        buf = b""
        try:
            async for chunk in pipe:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    text = line.decode("utf-8", "replace")
                    self.output.append(text)
                    if len(self.output) > 5000:
                        del self.output[:1000]
                    if ready is not None and text.startswith("stateroom listening on "):
                        self.url = text.split(" on ", 1)[1].strip()
                        self.port = int(self.url.rsplit(":", 1)[1])
                        ready.set()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        finally:
            if ready is not None:
                ready.set()

    async def stop(self, *, kill: bool = False) -> int | None:
        """Stop the supervisor (SIGTERM, or SIGKILL with `kill=True`); returns its exit code."""
        if self._client_cm is not None:
            cm, self._client_cm = self._client_cm, None
            with trio.CancelScope(shield=True):
                await cm.__aexit__(None, None, None)
        p = self.process
        if p is None:
            return None
        workers = _child_pids(p.pid) if kill else []
        if p.returncode is None:
            p.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        with trio.move_on_after(30):
            await p.wait()
        if p.returncode is None:
            p.kill()
            await p.wait()
        if kill:
            await self._wait_orphans_gone(workers)
        return p.returncode

    async def _wait_orphans_gone(self, pids: list[int]) -> None:
        """After a supervisor kill -9 its workers exit on their own; wait for that."""
        with trio.move_on_after(10):
            while any(_running(pid) for pid in pids):
                await trio.sleep(0.01)

    async def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same data folder (same port)."""
        assert self._nursery is not None
        await self.stop(kill=kill)
        self.options["port"] = self.port
        await self.start(self._nursery)
        self.options.pop("port", None)

    # ---------------------------------------------------------------- helpers

    async def deploy(self, config: Any = None, **keywords: Any) -> dict[str, Any]:
        return await self.client.deploy(config, **keywords)

    def namespace(self, binding: str) -> Any:
        return self.client.namespace(binding)

    async def processes(self) -> list[dict[str, Any]]:
        return await self.client.processes()

    async def worker_pids(self) -> list[int]:
        return [p["pid"] for p in await self.processes() if p["role"] == "worker"]

    async def kill_worker(self, object_or_index: Any = 0) -> int:
        """`kill -9` the worker owning a stub's object (or the worker at an index).

        Returns the pid killed; waits until a replacement is ready.
        """
        procs = [p for p in await self.processes() if p["role"] == "worker"]
        if isinstance(object_or_index, int):
            victim = procs[object_or_index]
        else:
            shard_count = sum(len(p["shards"]) for p in procs)
            shard = int(str(object_or_index.id)[:8], 16) % shard_count
            victim = next(p for p in procs if shard in p["shards"])
        pid = victim["pid"]
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(30):
            while True:
                await trio.sleep(0.02)
                now = [p for p in await self.processes() if p["role"] == "worker"]
                again = [p for p in now if p.get("index") == victim.get("index")]
                if again and again[0]["pid"] != pid and again[0].get("state") == "ready":
                    return pid

    async def list_object_ids(self, binding: str) -> list[str]:
        return [o["id"] for o in await self.client.objects(binding)]

    async def inject(self, point: str, stub: Any, times: float = 1) -> dict[str, Any]:
        """Crash the worker owning `stub`'s object the next `times` times it reaches
        `point` for it (a `times` below 1 is a probability); needs `fault_injection=True`."""
        return await self.client.inject(point, stub, times)

    async def run_alarm(self, stub: Any) -> Any:
        """Fire the object's alarm now (if it has one) and wait for the handler."""
        return await self.client.run_alarm(stub)

    async def run_in_object(self, stub: Any, fn: Any) -> Any:
        """Run `fn(instance, ctx)` (sync or async) inside the object; returns its result."""
        return await self.client.run_in_object(stub, fn)


def _child_pids(pid: int) -> list[int]:
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children()]
    except psutil.Error:
        return []


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.asynccontextmanager
async def open_runtime(data: str | Path | None = None, **options: Any) -> AsyncIterator[Runtime]:
    """Start a runtime for the duration of the block (temporary data folder by default)."""
    with contextlib.ExitStack() as stack:
        if data is None:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="stateroom-"))
        config = options.pop("config", None)
        async with trio.open_nursery() as nursery:
            rt = Runtime(Path(data), options)
            try:
                await rt.start(nursery)
                if config is not None:
                    await rt.deploy(config)
                yield rt
            finally:
                with trio.CancelScope(shield=True):
                    await rt.stop()
                nursery.cancel_scope.cancel()


try:
    import pytest

    @pytest.fixture
    async def stateroom_runtime(request: Any, tmp_path: Path) -> AsyncIterator[Runtime]:
        """A real runtime (supervisor + workers) on a free port and a temp data folder."""
        marker = request.node.get_closest_marker("stateroom")
        options = dict(marker.kwargs) if marker is not None else {}
        async with open_runtime(tmp_path / "data", **options) as rt:
            yield rt

    def pytest_configure(config: Any) -> None:
        config.addinivalue_line(
            "markers",
            "stateroom(config=None, **serve_flags): configure the stateroom_runtime fixture",
        )

except ImportError:  # pragma: no cover - pytest is optional at runtime
    pass
