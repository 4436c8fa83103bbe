"""`stateroom top` (SPEC §11) draws its view in a real pseudo-terminal."""

import fcntl
import os
import pty
import struct
import sys
import termios

import pytest
import trio

from tests.conftest import APPS

METERS_APP = str(APPS / "meters" / "stateroom.toml")


async def run_in_pty(argv, *, columns=160, rows=50, timeout=60):
    """Run `argv` with a pty as stdout/stderr; return (exit code, everything it printed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    chunks = []
    try:
        proc = await trio.lowlevel.open_process(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env
        )
        os.close(slave)
        slave = -1
        with trio.fail_after(timeout):
            while True:
                await trio.lowlevel.wait_readable(master)
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed its end
                    break
                if not data:
                    break
                chunks.append(data)
            code = await proc.wait()
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    return code, b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_top_once_renders_processes_and_busiest_objects_in_a_terminal(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("METER")
    await ns.get_by_name("hot-object").burn(0.2)
    for _ in range(3):
        await ns.get_by_name("chatty-object").hit()
    procs = await rt.processes()
    code, screen = await run_in_pty(
        [sys.executable, "-m", "stateroom", "top", "--once", "--url", rt.url, "--token", rt.token]
    )
    assert code == 0, screen
    assert "\x1b[" in screen, "rich should draw with terminal escapes in a pty"
    for needle in [
        "processes",
        "supervisor",
        "worker 0",
        "worker 1",
        "busiest by CPU",
        "busiest by requests",
        "hot-object",
        "chatty-object",
    ]:
        assert needle in screen, f"{needle!r} missing from:\n{screen}"
    for p in procs:
        assert str(p["pid"]) in screen, f"pid {p['pid']} missing from:\n{screen}"


@pytest.mark.stateroom(workers=1)
async def test_top_with_a_wrong_token_says_so_in_one_line(stateroom_runtime):
    rt = stateroom_runtime
    code, screen = await run_in_pty(
        [sys.executable, "-m", "stateroom", "top", "--once", "--url", rt.url, "--token", "nope"]
    )
    assert code != 0 and "not authorized" in screen, screen
    assert len(screen.strip().splitlines()) == 1, screen
