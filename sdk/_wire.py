"""Conversions between user-facing `Request`/`Response` and their wire records.

Headers of a wire record were checked where they entered the runtime (llhttp at the
front door, `Headers` when user code built them), so they are taken as they are.
"""

from __future__ import annotations

from ._http import Headers, Request, Response
from ._protocol import HttpRequest, HttpResponse


def request_to_wire(request: Request) -> HttpRequest:
    return HttpRequest(request.method, request.url, list(request.headers.items()), request.body)


def request_from_wire(r: HttpRequest) -> Request:
    return Request(r.url, method=r.method, headers=Headers.trusted(r.headers), body=r.body)


def response_to_wire(response: Response) -> HttpResponse:
    ws = response.web_socket
    ws_id = getattr(ws, "_ws_id", None) if ws is not None else None
    return HttpResponse(response.status, list(response.headers.items()), response.body, ws_id)


def response_from_wire(r: HttpResponse) -> Response:
    if r.web_socket is not None:
        from ._object import WebSocket

        ws = WebSocket()
        ws._ws_id = r.web_socket
        return Response(r.body, status=r.status, headers=Headers.trusted(r.headers), web_socket=ws)
    return Response(r.body, status=r.status, headers=Headers.trusted(r.headers))
