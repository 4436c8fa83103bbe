"""Routes under `/_stateroom/` (after the token check): SDK calls and the admin API."""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec
import trio

from stateroom._errors import DurableObjectError, error_from_fields, error_to_fields
from stateroom._files import sqlite_file_bytes
from stateroom._ids import is_id_string
from stateroom._protocol import Admin, Fetch, HttpRequest, HttpResponse, Rpc, Target

from .app import SDK_CONTENT_TYPE, HttpError, Supervisor, error_http, json_response, split_key

_mp = msgspec.msgpack


def sdk_response(
    ok: bool, value: bytes = b"", error: dict | None = None, status: int = 200
) -> HttpResponse:
    body = _mp.encode({"ok": ok, "value": value, "error": error})
    headers = [("content-type", SDK_CONTENT_TYPE)]
    if error is not None and (error.get("retryable") or error.get("overloaded")) and status >= 500:
        headers.append(("retry-after", "1"))
    return HttpResponse(status, headers, body)


async def _sdk_call(sup: Any, target: Any, make: Any) -> HttpResponse:
    """Send `make(request_id)` to the object's worker; its reply as an SDK response."""
    try:
        reply = await sup.call_object(make, target)
    except DurableObjectError as exc:
        f = error_to_fields(exc)
        return sdk_response(False, error=f, status=_status_for_error(f))
    if reply.ok:
        return sdk_response(True, reply.value)
    f = reply.error or {}
    return sdk_response(False, error=f, status=_status_for_error(f))


def _status_for_error(fields: dict[str, Any]) -> int:
    kind = fields.get("kind")
    if kind == "not_found":
        return 404
    if kind in ("runtime", "reset", "crashed", "overloaded"):
        return 503 if fields.get("retryable") or fields.get("overloaded") else 500
    return 200


async def route(sup: Supervisor, request: HttpRequest, path: str) -> HttpResponse:
    parts = [p for p in path.split("/") if p != ""]
    method = request.method
    query = dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))
    if not parts or parts[0] != "v1":
        return await _extension_route(sup, request, parts, query, path)
    rest = parts[1:]
    head = rest[0] if rest else ""

    if head == "processes" and len(rest) == 1 and method == "GET":
        return json_response({"processes": sup.processes()})

    if head == "namespaces":
        if len(rest) == 1 and method == "GET":
            return json_response({"namespaces": _namespaces(sup)})
        if len(rest) == 3 and rest[2] == "id" and method == "GET":
            class_name, ns_key, factory = sup.resolve(unquote(rest[1]))
            name = query.get("name")
            if name is None:
                raise HttpError(400, "missing ?name=")
            return json_response({"id": str(factory.from_name(name))})

    if head == "sdk" and rest[1:] == ["namespaces"] and method == "GET":
        return json_response(
            {
                "namespaces": [
                    {"binding": b, "class": c, "secret": f._secret.hex()}  # noqa: SLF001
                    for b, (c, k, f) in sup.bindings.items()
                ]
            }
        )

    if head == "deployments":
        if len(rest) == 1 and method == "POST":
            try:
                payload = _mp.decode(request.body)
            except msgspec.DecodeError as exc:
                raise HttpError(400, f"deploy request is not valid msgpack: {exc}") from None
            dry = query.get("dry_run") in ("1", "true")
            result = await sup.deploy(payload, dry_run=dry)
            return json_response(result)
        if len(rest) == 1 and method == "GET":
            return json_response(
                {
                    "deployments": [
                        {
                            "version": d["version"],
                            "created": d["created"],
                            "name": d["config"].get("name"),
                            "bindings": d["config"]["bindings"],
                            "sha256": d["sha256"],
                            "note": d["note"],
                            "current": sup.current is not None
                            and d["version"] == sup.current["version"],
                        }
                        for d in sup.db.deployments()
                    ]
                }
            )

    if head == "rollback" and method == "POST":
        return json_response(await rollback(sup, request))

    if head == "rpc" and len(rest) == 4 and method == "POST":
        binding, key, rpc_method = unquote(rest[1]), rest[2], unquote(rest[3])
        name, oid = split_key(key)
        try:
            target = sup.target_for(binding, name=name, object_id=oid)
        except DurableObjectError as exc:
            f = error_to_fields(exc)
            return sdk_response(False, error=f, status=_status_for_error(f))
        return await _sdk_call(sup, target, lambda rid: Rpc(rid, target, rpc_method, request.body))

    if head == "fetch" and len(rest) >= 3:
        binding, key = unquote(rest[1]), rest[2]
        name, oid = split_key(key)
        target = sup.target_for(binding, name=name, object_id=oid)
        sub = "/" + "/".join(path.split("/")[4:])
        parsed = urlsplit(request.url)
        url = f"{parsed.scheme}://{parsed.netloc}{sub}" + (
            f"?{parsed.query}" if parsed.query else ""
        )
        headers = [(k, v) for k, v in request.headers if k.lower() != "authorization"]
        inner = HttpRequest(request.method, url, headers, request.body)
        try:
            reply = await sup.call_object(lambda rid: Fetch(rid, inner, target), target)
        except DurableObjectError as exc:
            return _fetch_error(error_to_fields(exc))
        if not reply.ok:
            return _fetch_error(reply.error or {})
        assert reply.response is not None
        return reply.response

    if head == "objects" and len(rest) >= 2:
        return await objects_route(sup, request, rest[1:], query)

    return await _extension_route(sup, request, parts, query, path)


async def _extension_route(
    sup: Supervisor, request: HttpRequest, parts: list[str], query: dict, path: str
) -> HttpResponse:
    """Offer a route to the extensions (dashboard, metrics, billing, ...); else 404."""
    for ext in sup.extensions:
        handler = getattr(ext, "route", None)
        if handler is not None:
            resp = await handler(request, parts, query)
            if resp is not None:
                return resp
    raise HttpError(404, f"unknown route /_stateroom/{path}")


def _fetch_error(fields: dict[str, Any]) -> HttpResponse:
    """Runtime error of an SDK fetch: HTTP status plus the error as a header for the SDK."""
    resp = error_http(error_from_fields(fields))
    return HttpResponse(
        resp.status, resp.headers + [("x-stateroom-error", json.dumps(fields))], resp.body
    )


def _namespaces(sup: Supervisor) -> list[dict[str, Any]]:
    out = []
    for binding, (class_name, ns_key, _) in sorted(sup.bindings.items()):
        out.append(
            {"binding": binding, "class": class_name, "objects": len(_object_ids(sup, ns_key))}
        )
    return out


def _object_ids(sup: Supervisor, ns_key: int) -> list[str]:
    folder = sup.data_dir / "objects" / str(ns_key)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(n[:-7] for n in names if n.endswith(".sqlite") and is_id_string(n[:-7]))


async def _live_ids(sup: Supervisor, class_name: str, timeout: float = 5.0) -> set[str]:
    """Ids of the class's objects in memory (constructed, not evicted or hibernated).

    Asks every ready worker for the ones it hosts; a worker that is restarting, or
    does not answer within `timeout`, hosts none (a restarted worker starts empty).
    """
    from stateroom import _codec

    from .workers import WorkerState

    live: set[str] = set()
    probe = Target(class_name, "")

    async def ask(w: Any) -> None:
        try:
            reply = await sup.pool.request(w, lambda rid: Admin(rid, "live", probe), wait_ready=0)
        except DurableObjectError:
            return
        if reply.ok and reply.value:
            live.update(_codec.decode(reply.value))

    with trio.move_on_after(timeout):
        async with trio.open_nursery() as nursery:
            for w in sup.pool.workers:
                if w.state is WorkerState.READY:
                    nursery.start_soon(ask, w)
    return live


async def object_admin(
    sup: Supervisor, target: Any, op: str, data: bytes = b"", params: dict | None = None
) -> Any:
    from stateroom import _codec

    reply = await sup.call_object(lambda rid: Admin(rid, op, target, data, params or {}), target)
    if not reply.ok:
        raise error_from_fields(reply.error or {})
    return _codec.decode(reply.value) if reply.value else None


async def objects_route(
    sup: Supervisor, request: HttpRequest, rest: list[str], query: dict
) -> HttpResponse:
    binding = unquote(rest[0])
    class_name, ns_key, factory = sup.resolve(binding)
    method = request.method
    if len(rest) == 1 and method == "GET":
        names = sup.db.names(ns_key)
        live = await _live_ids(sup, class_name)
        objects = []
        for oid in _object_ids(sup, ns_key):
            path = sup.data_dir / "objects" / str(ns_key) / f"{oid}.sqlite"
            objects.append(
                {
                    "id": oid,
                    "name": names.get(oid),
                    "bytes": sqlite_file_bytes(path),
                    "active": oid in live,
                }
            )
        return json_response({"objects": objects})
    oid = unquote(rest[1])
    try:
        factory.from_string(oid)
    except (TypeError, ValueError) as exc:
        raise HttpError(400, f"bad object id: {exc}") from None
    target = sup.target_for(binding, object_id=oid)
    if len(rest) == 2 and method == "GET":
        info = await object_admin(sup, target, "info")
        name = sup.db.name_of(ns_key, oid) or target.name
        return json_response(
            {"id": oid, "name": name, "bytes": info["bytes"], "active": info["active"]}
        )
    if len(rest) == 2 and method == "DELETE":
        await object_admin(sup, target, "delete")
        for ext in sup.extensions:
            hook = getattr(ext, "on_object_deleted", None)
            if hook is not None:
                hook(ns_key, oid)
        return HttpResponse(204, [], b"")
    if len(rest) == 3 and rest[2] == "export" and method == "GET":
        data = await object_admin(sup, target, "export")
        return HttpResponse(200, [("content-type", "application/vnd.sqlite3")], data)
    if len(rest) == 3 and rest[2] == "import" and method in ("PUT", "POST"):
        try:
            await object_admin(sup, target, "import", request.body)
        except (ValueError, TypeError) as exc:
            raise HttpError(400, f"cannot import: {exc}") from None
        return json_response({"ok": True})
    if len(rest) == 3 and rest[2] == "run" and method == "POST":
        # Testing kit: run a pickled fn(instance, ctx) as an event of the object. The
        # body is handed to the owning worker unopened (the supervisor never unpickles).
        return await _sdk_call(
            sup, target, lambda rid: Admin(rid, "run_in_object", target, request.body)
        )
    for ext in sup.extensions:
        handler = getattr(ext, "object_route", None)
        if handler is not None:
            resp = await handler(request, target, ns_key, rest[2:], query)
            if resp is not None:
                return resp
    raise HttpError(404, "unknown object route")


async def rollback(sup: Supervisor, request: HttpRequest) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        raise HttpError(400, "body must be JSON") from None
    if sup.current is None:
        raise HttpError(400, "nothing is deployed")
    version = body.get("version")
    if version is None:
        version = sup.current["version"] - 1
        if version < 1:
            raise HttpError(404, "no deployment before version 1 to roll back to")
    if isinstance(version, bool) or not isinstance(version, int):
        raise HttpError(400, f"version must be a deployment number, not {version!r}")
    dep = sup.db.deployment(version)
    if dep is None:
        raise HttpError(404, f"no deployment {version}")
    from .deployments import read_bundle

    bundle = read_bundle(sup.data_dir, dep["version"])
    payload = {
        "config": dep["config"],
        "classes": dep["manifest"]["classes"],
        "has_default": dep["manifest"]["has_default"],
        "python": dep["python"],
        "bundle": bundle,
    }
    from .deployments import DeployRefused

    try:
        result = await sup.deploy(payload, note=f"rollback to {dep['version']}")
    except DeployRefused as exc:
        # E.g. a later migration renamed or deleted a class the old code binds.
        raise DeployRefused(f"cannot roll back to version {dep['version']}: {exc}") from None
    result["rolled_back_to"] = dep["version"]
    return result
