"""Probes: a test's function run inside an object (`stateroom.testing.run_in_object`).

The testing kit ships `fn` pickled by value (cloudpickle) through a token-protected
admin route; only the worker owning the object unpickles it, here, exactly like
deployed code. `fn(instance, ctx)` runs as one *event* of the object: it waits its
turn behind earlier events, constructs the object if it is not in memory, may be
sync or async, and its writes commit (and its result is released) under the same
gates as a fetch or RPC. Its result travels back with the value codec, so it must
be a codec value; an exception it raises reaches the caller like an RPC error.
"""

from __future__ import annotations

import inspect
from typing import Any

import cloudpickle

from stateroom import _codec
from stateroom._protocol import Target

__all__ = ["run_in_object"]


async def run_in_object(worker: Any, target: Target, pickled: bytes, request_id: int) -> bytes:
    """Run the pickled `fn(instance, ctx)` as an event of `target`; codec-encoded result."""
    try:
        fn = cloudpickle.loads(pickled)
    except Exception as exc:
        raise ValueError(f"cannot unpickle the function: {type(exc).__name__}: {exc}") from None
    if not callable(fn):
        raise TypeError(f"run_in_object needs a callable, not {type(fn).__name__}")
    host = worker.host_for(target)

    async def event(instance: Any) -> bytes:
        result = fn(instance, host.ctx)
        if inspect.isawaitable(result):
            result = await result
        try:
            return _codec.encode(result)
        except TypeError as exc:
            raise TypeError(
                f"run_in_object: the function's result cannot travel back ({exc});"
                " return a codec value (None, bool, int, float, str, bytes, containers, ...)"
            ) from None

    return await worker.deliver(target, event, request_id)
