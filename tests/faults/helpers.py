"""Shared helpers of the fault tests: the test app, polling, process checks."""

from __future__ import annotations

import os
from typing import Any

import psutil
import pytest
import trio

from stateroom import DurableObjectError
from tests.conftest import APPS

APP = str(APPS / "faults" / "stateroom.toml")


def box(rt: Any, name: str) -> Any:
    return rt.namespace("BOX").get_by_name(name)


def ledger(rt: Any, name: str) -> Any:
    return rt.namespace("LEDGER").get_by_name(name)


async def eventually(what: str, probe: Any, timeout: float = 20.0) -> Any:
    """Poll `await probe()` until it returns a truthy value without a runtime error."""
    try:
        with trio.fail_after(timeout):
            while True:
                try:
                    result = await probe()
                except DurableObjectError:
                    result = None
                if result:
                    return result
                await trio.sleep(0.02)
    except trio.TooSlowError:
        pytest.fail(f"timed out after {timeout} s waiting for {what}")


async def workers(rt: Any) -> list[dict[str, Any]]:
    return [p for p in await rt.processes() if p["role"] == "worker"]


async def owner_of(rt: Any, stub: Any) -> dict[str, Any]:
    """The processes entry of the worker owning `stub`'s object."""
    procs = await workers(rt)
    shard_count = sum(len(p["shards"]) for p in procs)
    shard = int(str(stub.id)[:8], 16) % shard_count
    return next(p for p in procs if shard in p["shards"])


async def wait_replaced(rt: Any, index: int, old_pid: int, timeout: float = 20.0) -> int:
    """Wait until worker slot `index` runs a new, ready process; returns its pid."""

    async def replaced() -> int | None:
        for p in await workers(rt):
            if p["index"] == index and p["pid"] != old_pid and p["state"] == "ready":
                return p["pid"]
        return None

    return await eventually(f"worker {index} (pid {old_pid}) to be replaced", replaced, timeout)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill9(pid: int) -> None:
    os.kill(pid, 9)


def names_on_each_worker(
    rt_procs: list[dict[str, Any]], ns: Any, count: int = 1
) -> dict[int, list[str]]:
    """`count` object names whose shard belongs to each worker index."""
    shard_count = sum(len(p["shards"]) for p in rt_procs)
    owner = {s: p["index"] for p in rt_procs for s in p["shards"]}
    found: dict[int, list[str]] = {p["index"]: [] for p in rt_procs}
    i = 0
    while any(len(v) < count for v in found.values()):
        name = f"obj-{i}"
        i += 1
        shard = int(str(ns.id_from_name(name))[:8], 16) % shard_count
        if len(found[owner[shard]]) < count:
            found[owner[shard]].append(name)
    return found
