"""The chat example (examples/chat) from real browsers: two headless Chromium tabs.

A message typed in one tab appears in the other, also after the room hibernated
between messages (its sockets stayed open in the supervisor).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from tests.cdp import open_page
from tests.conftest import EXAMPLES

CHAT = str(EXAMPLES / "chat" / "stateroom.toml")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

LOG_TEXT = "Array.from(document.querySelectorAll('#log li')).map(li => li.textContent)"


async def wait_js(page, expression: str, what: str, timeout: float = 30):
    value = None
    try:
        with trio.fail_after(timeout):
            while True:
                value = await page.evaluate(expression)
                if value:
                    return value
                await trio.sleep(0.05)
    except trio.TooSlowError:
        log = await page.evaluate(LOG_TEXT)
        raise AssertionError(
            f"waiting for {what}: last {value!r}; log {log}; errors {page.errors}"
        ) from None


async def type_and_send(page, text: str) -> None:
    """Type like a person: focus the box, insert the text, press Enter."""
    await page.evaluate("document.getElementById('text').focus()")
    await page.send("Input.insertText", {"text": text})
    for kind in ("keyDown", "keyUp"):
        await page.send(
            "Input.dispatchKeyEvent",
            {
                "type": kind,
                "key": "Enter",
                "code": "Enter",
                "windowsVirtualKeyCode": 13,
                "text": "\r",
            },
        )


async def objects_active(rt) -> int:
    return sum(p["objects_active"] for p in await rt.processes() if p["role"] == "worker")


@pytest.mark.browser
@pytest.mark.stateroom(config=CHAT, workers=2, hibernate_after=1)
async def test_message_typed_in_one_tab_appears_in_the_other(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    (tmp_path / "alice").mkdir()
    (tmp_path / "bob").mkdir()
    async with (
        open_page(tmp_path / "alice", width=900, height=700) as alice,
        open_page(tmp_path / "bob", width=900, height=700) as bob,
    ):
        await alice.navigate(f"{rt.url}/?room=browsers&name=alice")
        await wait_js(
            alice,
            "document.getElementById('status')?.className === 'connected'",
            "alice to connect",
        )
        await bob.navigate(f"{rt.url}/?room=browsers&name=bob")
        await wait_js(
            bob, "document.getElementById('status')?.className === 'connected'", "bob to connect"
        )
        await wait_js(
            alice,
            "document.getElementById('online')?.textContent.includes('bob')",
            "alice to see bob join",
        )

        await type_and_send(alice, "hello from alice")
        await wait_js(
            bob,
            f"{LOG_TEXT}.some(t => t.endsWith('alice:hello from alice'))",
            "bob to see alice's message",
        )
        await type_and_send(bob, "hi alice")
        await wait_js(
            alice, f"{LOG_TEXT}.some(t => t.endsWith('bob:hi alice'))", "alice to see bob's reply"
        )

        # Let the room hibernate with both tabs connected, then talk again.
        with trio.fail_after(30):
            while await objects_active(rt):
                await trio.sleep(0.05)
        await type_and_send(bob, "still there?")
        await wait_js(
            alice,
            f"{LOG_TEXT}.some(t => t.endsWith('bob:still there?'))",
            "alice to see a message after hibernation",
        )
        assert await alice.evaluate("document.getElementById('status').className") == "connected"
        await alice.screenshot(ARTIFACTS / "chat-alice.png")
        assert alice.errors == [] and bob.errors == [], (alice.errors, bob.errors)

    # The room kept the history in its database.
    async with httpx.AsyncClient(base_url=rt.url) as http:
        history = (await http.get("/rooms/browsers/history")).json()
    assert [(m["name"], m["text"]) for m in history["messages"]] == [
        ("alice", "hello from alice"),
        ("bob", "hi alice"),
        ("bob", "still there?"),
    ], json.dumps(history)
