"""`stateroom top`: a live terminal view of a runtime's processes and busiest objects.

Each refresh reads three admin routes: `/_stateroom/v1/processes` (CPU, memory,
objects and sockets per process), `/_stateroom/v1/usage` (running totals, whose
change between two refreshes gives requests per second and cost per minute) and
`/_stateroom/v1/billing?group_by=object&since=60s` (the busiest objects of the
last minute, by CPU and by requests). The view is drawn with rich; `--once`
prints one frame and exits (scripts, tests), otherwise it refreshes every
`interval` seconds until Ctrl-C. A refresh that fails shows its error and the
next one retries; a wrong token stops at once with a clear message.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

__all__ = ["run_top", "render_frame"]

BUSIEST = 8


def _get(http: httpx.Client, path: str, **params: Any) -> Any:
    r = http.get(path, params=params)
    if r.status_code == 401:
        raise PermissionError("the runtime refused the token (use --token or STATEROOM_TOKEN)")
    if r.status_code != 200:
        raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.text.strip()[:200]}")
    return r.json()


def fetch(http: httpx.Client) -> dict[str, Any]:
    """One snapshot of everything the view shows."""
    return {
        "processes": _get(http, "/_stateroom/v1/processes")["processes"],
        "usage": _get(http, "/_stateroom/v1/usage"),
        "billing": _get(http, "/_stateroom/v1/billing", group_by="object", since="60s"),
    }


def _mib(n: float) -> str:
    return f"{n / 1048576:.1f}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _uptime(s: float) -> str:
    s = int(s)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _object_label(g: dict[str, Any]) -> str:
    if g.get("name"):
        return str(g["name"])
    oid = g.get("object") or "-"
    return oid[:12] + "…" if len(oid) > 12 else oid


def render_frame(url: str, snap: dict[str, Any], prev: dict[str, Any] | None = None) -> Any:
    """The rich renderable of one snapshot (`prev`: the snapshot before, for rates)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    usage = snap["usage"]
    totals = usage["totals"]
    rate = ""
    if prev is not None:
        dt = max(1e-3, usage["time"] - prev["usage"]["time"])
        was = prev["usage"]["totals"]
        rps = max(0.0, (totals["requests"] - was["requests"]) / dt)
        wsps = max(0.0, (totals["ws_messages_in"] - was["ws_messages_in"]) / dt)
        cpm = max(0.0, (totals["cost_usd"] - was["cost_usd"]) / dt * 60)
        rate = f"  {rps:,.1f} req/s  {wsps:,.1f} ws msg/s  ${cpm:.3g}/min"
    header = Text.assemble(
        ("stateroom top ", "bold"),
        (url, "cyan"),
        f"  {time.strftime('%H:%M:%S')}  requests {totals['requests']:,}"
        f"  ws in {totals['ws_messages_in']:,}  stored {_bytes(totals['stored_bytes'])}"
        f"  cost ${totals['cost_usd']:.4g}{rate}",
    )

    procs = Table(title="processes", title_justify="left", expand=True)
    for col, just in [
        ("process", "left"),
        ("pid", "right"),
        ("state", "left"),
        ("shards", "right"),
        ("CPU %", "right"),
        ("CPU s", "right"),
        ("RSS MiB", "right"),
        ("objects", "right"),
        ("sockets", "right"),
        ("restarts", "right"),
        ("uptime", "right"),
    ]:
        procs.add_column(col, justify=just)  # type: ignore[arg-type]
    for p in snap["processes"]:
        name = "supervisor" if p["role"] == "supervisor" else f"worker {p.get('index', '')}"
        cpu = p["cpu_percent"]
        procs.add_row(
            name,
            str(p["pid"] or "-"),
            p.get("state", "ready"),
            str(len(p["shards"])),
            Text(f"{cpu:.1f}", style="bold red" if cpu >= 80 else ""),
            f"{p['cpu_seconds']:.2f}",
            _mib(p["rss_bytes"]),
            str(p["objects_active"]),
            str(p["sockets_parked"]),
            str(p["restarts"]),
            _uptime(p["uptime_s"]),
        )

    groups = snap["billing"]["groups"]

    def busiest(title: str, key: str) -> Table:
        t = Table(title=title, title_justify="left", expand=True)
        for col in ("object", "class", "CPU ms", "requests", "ws in", "cost $"):
            t.add_column(col, justify="left" if col in ("object", "class") else "right")
        top = sorted(groups, key=lambda g: (g[key], g["cpu_ms"], g["requests"]), reverse=True)
        for g in top[:BUSIEST]:
            t.add_row(
                _object_label(g),
                g["class"],
                f"{g['cpu_ms']:.1f}",
                str(g["requests"]),
                str(g["ws_messages_in"]),
                f"{g['cost_usd']:.3g}",
            )
        if not top:
            t.add_row("(no object used in the last minute)", "", "", "", "", "")
        return t

    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(
        busiest("busiest by CPU (last minute)", "cpu_ms"),
        busiest("busiest by requests (last minute)", "requests"),
    )
    return Group(header, procs, grid)


def run_top(url: str, token: str | None, interval: float = 1.0, once: bool = False) -> None:
    """Show the live view of the runtime at `url` (one frame with `once`)."""
    from rich.console import Console, Group
    from rich.live import Live
    from rich.text import Text

    if interval <= 0:
        raise ValueError("--interval must be a positive number of seconds")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    console = Console()
    with httpx.Client(base_url=url, headers=headers, timeout=10.0) as http:
        snap = fetch(http)
        if once:
            console.print(render_frame(url, snap))
            return
        prev: dict[str, Any] | None = None
        with Live(
            render_frame(url, snap), console=console, screen=True, auto_refresh=False
        ) as live:
            while True:
                time.sleep(interval)
                try:
                    prev, snap = snap, fetch(http)
                    live.update(render_frame(url, snap, prev), refresh=True)
                except PermissionError:
                    raise
                except (httpx.HTTPError, RuntimeError) as exc:
                    failed = Text(f"refresh failed: {exc}", style="red")
                    live.update(Group(render_frame(url, snap, prev), failed), refresh=True)
