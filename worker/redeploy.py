"""Redeploy inside a worker: replacing the code of live objects without losing events.

Activating a deployment (`Redeployer.activate`) switches the worker at once:
`Default` and `env` of every request that starts afterwards are the new ones. Live
objects move over one by one, each at its own pace:

* Idle objects let go of their instance now (their host, open database and
  socket mirror stay, and are evicted later like any idle object); their next
  event constructs the new class.
* Busy objects become *stale*. A stale host starts no new event on its old
  instance: its runner (`catalog.ObjectHost._run_queue`) calls `retire`, which waits
  until the events in flight and the `ctx.wait_until` tasks have finished, for at
  most the grace period (`--deploy-grace`, default 30 s). Then it commits and
  drops the instance, and the runner constructs the new class for the next
  queued event. If the grace period runs out, the host is reset: the
  events still in flight fail with `ObjectResetError` (retryable unless the event
  had already made a durable write). Events that arrive meanwhile wait in the
  queue, in order; none is lost.
* Hosts are matched to the new deployment by namespace key, not by class name: an
  object of a renamed class keeps its host, database, queue and sockets under the
  new name (ids and data are kept). Hosts whose namespace the deployment deleted
  are reset at once (in-flight and queued events fail) and evicted, so the
  supervisor can remove their files afterwards.
* Until the supervisor routes by the new bindings, calls may still name a renamed
  class by its old name; `aliases` maps such old names to the new ones.

Invariant: once a worker has activated deployment N, no event starts on an
instance constructed from an earlier deployment.
"""

from __future__ import annotations

from typing import Any

import trio

from stateroom._errors import BindingNotFoundError
from stateroom._protocol import Target

DEFAULT_GRACE = 30.0


class Redeployer:
    """Moves one worker's live objects from one deployment to the next."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        # Old class name -> new class name for classes the current deployment renamed.
        # Replaced at every activation.
        self.aliases: dict[str, str] = {}

    @property
    def grace(self) -> float:
        return float(self.worker.settings.get("deploy_grace", DEFAULT_GRACE))

    def resolve(self, target: Target) -> Target:
        """The target under the current class name (an old name of a renamed class maps)."""
        dep = self.worker.deployment
        if dep is None or target.class_name in dep.classes:
            return target
        new = self.aliases.get(target.class_name)
        if new is None:
            return target
        return Target(new, target.id, target.name)

    def activate(self, dep: Any) -> None:
        """Make `dep` current. Synchronous: nothing else runs in this worker meanwhile."""
        w = self.worker
        old = w.deployment
        old_keys = {c: k for c, (k, _) in old.namespaces.items()} if old is not None else {}
        new_by_key = {k: c for c, (k, _) in dep.namespaces.items()}
        self.aliases = {
            c: new_by_key[k] for c, k in old_keys.items() if k in new_by_key and new_by_key[k] != c
        }
        for (class_name, oid), host in list(w.catalog.items()):
            new_class = new_by_key.get(old_keys.get(class_name, -1))
            if new_class is None or new_class not in dep.classes:
                self._drop_deleted(host, dep.version)
                continue
            if new_class != class_name:
                del w.catalog[(class_name, oid)]
                host.target = Target(new_class, oid, host.target.name)
                w.catalog[(new_class, oid)] = host
        w.install(dep)
        for host in list(w.catalog.values()):
            if host.instance is None:
                continue
            if host.is_idle():
                self._drop_instance(host)
            else:
                host.stale = True

    def _drop_deleted(self, host: Any, version: int) -> None:
        """A host of a class the deployment deleted: fail its events, evict it."""
        name = host.target.class_name
        host.stale = False
        waiting = list(host.queue)
        host.queue.clear()
        for ev in waiting:
            ev.finish(
                error=BindingNotFoundError(f"class {name!r} was deleted by deployment {version}")
            )
        if host.instance is not None or host.inflight:
            host.reset(f"class {name!r} was deleted by deployment {version}")
        else:
            host.db.close()
        self.worker.evict(host)

    async def retire(self, host: Any) -> None:
        """Drop a stale host's old instance once its in-flight work is done.

        Called by the host's runner before it starts an event. Waits for the events
        in flight and `wait_until` tasks (at most the grace period, then resets the
        host), commits and drops the instance; the runner then constructs the
        current class. Cancellation leaves the host stale, unchanged.
        """
        with trio.move_on_after(self.grace):
            while host.inflight or host.waiting:
                await host.settled.park()
        if host.instance is None:
            host.stale = False  # reset meanwhile: the next event constructs the new class
            return
        if not host.stale:
            return
        host.stale = False
        if host.inflight or host.waiting:
            host.reset(
                f"a new deployment is active and this event did not finish within the"
                f" {self.grace:g} s grace period"
            )
            return
        self._drop_instance(host)

    @staticmethod
    def _drop_instance(host: Any) -> None:
        """Let go of the old instance; the host, its database and sockets stay.

        The next event constructs the current class (the constructor runs again, as
        after a reset); the eviction loop evicts the host later like any other.
        """
        try:
            host.commit()
        except Exception:  # noqa: BLE001 - a failed commit has reset the host already
            return
        host.stale = False
        host.instance = None
        host.ctx = None
        host.state = type(host.state).LOADING
