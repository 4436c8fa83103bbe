"""The dashboard: `GET /_stateroom/dashboard`, a page of live charts (SPEC §12).

The page (`static/dashboard.html` + `static/dashboard.js`) polls the admin API
from the browser — `/_stateroom/v1/processes` and `/_stateroom/v1/usage` every
second, `/_stateroom/v1/billing?group_by=object` every few seconds — and draws
per-process CPU and memory, requests per second and cost per minute with uPlot
(a small canvas chart library, vendored from the npm registry into `static/` by
`scripts/vendor-uplot.sh`; MIT licence beside it).

Authentication: like every reserved route it needs the token. A browser opens
`/_stateroom/dashboard?token=T` once; the answer sets the cookie
`stateroom_token` (HttpOnly, SameSite=Strict, path `/_stateroom/`), the page
removes the token from the address bar (`history.replaceState`), and its own
requests authenticate with the cookie. Assets are a fixed list of files (no path from the
request reaches the file system), served with a Content-Security-Policy that
allows only same-origin scripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stateroom._protocol import HttpResponse

__all__ = ["Dashboard"]

STATIC = Path(__file__).parent / "static"

# File name -> content type: everything the dashboard route serves.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "uplot.iife.min.js": "text/javascript; charset=utf-8",
    "uplot.min.css": "text/css; charset=utf-8",
}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline';"
    " img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
)


class Dashboard:
    """Supervisor extension serving the dashboard page and its assets."""

    def __init__(self, sup: Any) -> None:
        self.sup = sup
        # File name -> bytes, read at first use.
        self._cache: dict[str, bytes] = {}

    def _file(self, name: str) -> bytes:
        data = self._cache.get(name)
        if data is None:
            data = (STATIC / name).read_bytes()
            self._cache[name] = data
        return data

    async def route(
        self, request: Any, parts: list[str], query: dict[str, str]
    ) -> HttpResponse | None:
        if not parts or parts[0] != "dashboard" or request.method not in ("GET", "HEAD"):
            return None
        headers = [
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ]
        if len(parts) == 1:
            page = [
                *headers,
                ("content-type", "text/html; charset=utf-8"),
                ("cache-control", "no-store"),
            ]
            if "token" in query:
                # Authorized by ?token= (checked before routing): keep it in a cookie;
                # the page then drops the token from its address (history.replaceState).
                page.append(
                    (
                        "set-cookie",
                        f"stateroom_token={query['token']}; Path=/_stateroom/;"
                        " HttpOnly; SameSite=Strict",
                    )
                )
            return HttpResponse(200, page, self._file("dashboard.html"))
        if len(parts) == 2 and parts[1] in ASSETS:
            return HttpResponse(
                200,
                [*headers, ("content-type", ASSETS[parts[1]]), ("cache-control", "no-cache")],
                self._file(parts[1]),
            )
        return None
