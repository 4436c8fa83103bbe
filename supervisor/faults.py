"""Fault injection, the supervisor's side (SPEC §13): the route and the armed table.

`POST /_stateroom/v1/faults` with JSON `{"point", "binding", "name" | "id",
"times"?, "probability"?}` arms crash point `point` for one object in the worker
owning it (`stateroom.worker.faults`): that worker exits (`os._exit`) the next
`times` (default 1) times it reaches the point for that object, or, with
`probability` p (or a `times` below 1, read as a probability), each time with
probability p. `times: 0` disarms. Only with `--fault-injection`; otherwise the
route answers 404. Unknown point or malformed body -> 400; unknown binding -> 404.

The supervisor keeps what is armed, because an armed fault outlives the worker
it kills: the worker's last words (`FaultFired`) count one crash against the
fault, and when the slot's replacement is ready (before it serves anything) the
rest is armed in it again. A worker dying for another reason (kill -9, memory
limit) loses nothing armed either.

Invariant: for every object, the count armed in its owning worker equals the
count here (both decrement on the same crash; a replacement is re-armed from here
before it is marked ready).
"""

from __future__ import annotations

import json
from typing import Any

from stateroom._errors import error_from_fields
from stateroom._protocol import (
    FAULT_POINTS,
    Admin,
    FaultFired,
    HttpRequest,
    HttpResponse,
    Target,
    shard_of,
)

__all__ = ["FaultInjection"]


class FaultInjection:
    """Supervisor extension: the armed faults and the `/v1/faults` route."""

    def __init__(self, sup: Any) -> None:
        self.sup = sup
        # (point, class name, id) -> (target, remaining count >= 1 or probability < 1).
        self.armed: dict[tuple[str, str, str], tuple[Target, float]] = {}

    # ------------------------------------------------------------------ route

    async def route(
        self, request: HttpRequest, parts: list[str], query: dict
    ) -> HttpResponse | None:
        if parts[:2] != ["v1", "faults"] or len(parts) != 2:
            return None
        from .app import HttpError, json_response

        if not self.sup.settings.fault_injection:
            raise HttpError(
                404, "fault injection is off (start the runtime with --fault-injection)"
            )
        if request.method == "GET":
            return json_response({"faults": self.listing()})
        if request.method != "POST":
            raise HttpError(405, "use POST to arm a fault (GET lists them)")
        body = _json_body(request)
        point = body.get("point")
        if not isinstance(point, str) or point not in FAULT_POINTS:
            raise HttpError(400, f"unknown fault point {point!r}; one of {list(FAULT_POINTS)}")
        binding = body.get("binding")
        if not isinstance(binding, str):
            raise HttpError(400, "missing binding (a string)")
        self.sup.resolve(binding)  # unknown binding -> 404
        if isinstance(body.get("name"), str):
            target = self.sup.target_for(binding, name=body["name"])
        elif isinstance(body.get("id"), str):
            target = self.sup.target_for(binding, object_id=body["id"])
        else:
            raise HttpError(400, 'give the object as "name" or "id" (a string)')
        times = _times(body)
        await self.arm(point, target, times)
        return json_response({"ok": True, "point": point, "id": target.id, "times": times})

    def listing(self) -> list[dict[str, Any]]:
        return [
            {"point": point, "class": cls, "id": oid, "times": times}
            for (point, cls, oid), (_, times) in sorted(self.armed.items())
        ]

    # ------------------------------------------------------------------ table

    async def arm(self, point: str, target: Target, times: float) -> None:
        """Arm (or with 0 disarm) `point` for `target` here and in its worker."""
        key = (point, target.class_name, target.id)
        if times == 0:
            self.armed.pop(key, None)
        else:
            self.armed[key] = (Target(target.class_name, target.id), times)
        sup = self.sup
        reply = await sup.call_object(
            lambda rid: Admin(rid, "inject", target, b"", {"point": point, "times": times}), target
        )
        if not reply.ok:
            raise error_from_fields(reply.error or {})

    def on_worker_message(self, w: Any, msg: Any) -> bool:
        if not isinstance(msg, FaultFired):
            return False
        key = (msg.point, msg.target.class_name, msg.target.id)
        entry = self.armed.get(key)
        if entry is not None and entry[1] >= 1:
            left = entry[1] - 1
            if left < 1:
                del self.armed[key]
            else:
                self.armed[key] = (entry[0], left)
        return True

    async def on_worker_ready(self, w: Any) -> None:
        """Re-arm, in a replacement worker, the faults of the objects it owns."""
        pool = self.sup.pool
        for (point, _cls, _oid), (target, times) in list(self.armed.items()):
            if pool.owners[shard_of(target.id, pool.shard_count)] != w.index:
                continue
            try:
                await pool.request(
                    w,
                    lambda rid, t=target, p=point, n=times: Admin(
                        rid, "inject", t, b"", {"point": p, "times": n}
                    ),
                    starting=True,
                )
            except Exception:  # noqa: BLE001 - the worker died again; its next start retries
                return


def _json_body(request: HttpRequest) -> dict[str, Any]:
    from .app import HttpError

    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise HttpError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def _times(body: dict[str, Any]) -> float:
    """`times` K >= 1 (an integer), or a probability in (0, 1); 0 disarms."""
    from .app import HttpError

    if "probability" in body:
        p = body["probability"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
            raise HttpError(400, "probability must be a number between 0 and 1 (exclusive)")
        return float(p)
    times = body.get("times", 1)
    if isinstance(times, bool) or not isinstance(times, (int, float)) or times < 0:
        raise HttpError(400, "times must be a count >= 1, a probability below 1, or 0 to disarm")
    if times >= 1 and times != int(times):
        raise HttpError(400, "times must be a whole number when it is 1 or more")
    return float(times)
