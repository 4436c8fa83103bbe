"""A small Chrome DevTools Protocol driver for browser tests (Debian's headless Chromium).

`open_page(tmp_path)` starts Chromium (`--headless --no-sandbox --disable-gpu
--disable-background-networking`, a throw-away profile, a free debugging port),
opens one tab and yields a `Page`: `navigate(url)`, `evaluate(js)`,
`screenshot(path)`, and `errors` (console errors, uncaught exceptions and failed
loads seen so far). Tests using it are marked `browser` and skip when Chromium is
not installed (`scripts/install-browser.sh` installs it).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab, driven over a flattened CDP session."""

    def __init__(self, ws: Any, session: str) -> None:
        self._ws = ws
        self._session = session
        self._next = 0
        self._waiting: dict[int, list[Any]] = {}
        # Console errors, exceptions and failed resource loads, as readable strings.
        self.errors: list[str] = []
        self.console: list[str] = []

    async def serve(self) -> None:
        while True:
            msg = json.loads(await self._ws.get_message())
            if "id" in msg:
                slot = self._waiting.pop(msg["id"], None)
                if slot is not None:
                    slot[1] = msg
                    slot[0].set()
                continue
            method, params = msg.get("method"), msg.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]
                )
                self.console.append(f"{params['type']}: {text}")
                if params["type"] in ("error", "assert"):
                    self.errors.append(f"console.{params['type']}: {text}")
            elif method == "Runtime.exceptionThrown":
                d = params["exceptionDetails"]
                self.errors.append(
                    f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                e = params["entry"]
                self.errors.append(f"log: {e.get('text')} {e.get('url', '')}")

    async def send(
        self, method: str, params: dict[str, Any] | None = None, *, session: bool = True
    ) -> Any:
        self._next += 1
        slot: list[Any] = [trio.Event(), None]
        self._waiting[self._next] = slot
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        await self._ws.send_message(json.dumps(msg))
        await slot[0].wait()
        reply = slot[1]
        if "error" in reply:
            raise RuntimeError(f"CDP {method}: {reply['error']}")
        return reply.get("result", {})

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate {expression[:60]!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        shot = await self.send("Page.captureScreenshot", {"format": "png"})
        data = base64.b64decode(shot["data"])
        target = trio.Path(path)
        await target.parent.mkdir(parents=True, exist_ok=True)
        await target.write_bytes(data)


@contextlib.asynccontextmanager
async def open_page(
    tmp_path: Path, *, width: int = 1400, height: int = 1000
) -> AsyncIterator[Page]:
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (run scripts/install-browser.sh)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    proc = await trio.lowlevel.open_process(
        [
            exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        with trio.fail_after(30):
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if proc.returncode is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode}")
                await trio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        async with (
            open_websocket_url(
                f"ws://127.0.0.1:{port}{path}", max_message_size=256 * 1024 * 1024
            ) as ws,
            trio.open_nursery() as nursery,
        ):
            page = Page(ws, "")
            nursery.start_soon(page.serve)
            target = await page.send("Target.createTarget", {"url": "about:blank"}, session=False)
            attached = await page.send(
                "Target.attachToTarget",
                {"targetId": target["targetId"], "flatten": True},
                session=False,
            )
            page._session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                await page.send(f"{domain}.enable")
            await page.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            yield page
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            with trio.move_on_after(10):
                await proc.wait()
