"""`stateroom dev` (SPEC §11): serve + deploy + redeploy on file change, import errors
shown while the last good code keeps serving."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from stateroom._dev import split_args
from tests.integration.appgen import write_app


class DevProcess:
    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.url: str | None = None

    async def pump(self, pipe, lines: list[str]) -> None:
        buf = b""
        async for chunk in pipe:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                lines.append(text)
                if self.url is None and text.startswith("stateroom listening on "):
                    self.url = text.split(" on ", 1)[1].strip()

    def output(self) -> str:
        return "\n".join(self.stdout) + "\n--- stderr ---\n" + "\n".join(self.stderr[-60:])

    async def wait_for(self, lines: list[str], text: str, timeout: float = 30) -> None:
        with trio.fail_after(timeout):
            while not any(text in line for line in lines):
                if self.process.returncode is not None:
                    raise AssertionError(f"dev exited early waiting for {text!r}:\n{self.output()}")
                await trio.sleep(0.02)


async def get_until(
    http: httpx.AsyncClient, path: str, prefix: str, dev: DevProcess, timeout: float = 30
) -> str:
    last = None
    with trio.move_on_after(timeout):
        while True:
            try:
                r = await http.get(path)
                last = f"{r.status_code} {r.text.strip()}"
                if r.status_code == 200 and r.text.startswith(prefix):
                    return r.text
            except httpx.TransportError as exc:
                last = repr(exc)
            await trio.sleep(0.05)
    raise AssertionError(f"GET {path} never answered {prefix!r} (last: {last}):\n{dev.output()}")


def rewrite(app: str, old: str, new: str) -> str:
    assert old in app
    return app.replace(old, new)


async def test_dev_mode_redeploys_on_edit_and_keeps_last_good_code_on_import_error(tmp_path):
    folder = tmp_path / "app"
    config = write_app(folder, version="v1")
    data = folder / ".stateroom"  # inside the watched folder: must not trigger reloads
    env = dict(os.environ)
    env.pop("STATEROOM_TOKEN", None)
    process = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "stateroom",
            "dev",
            str(config),
            "--port",
            "0",
            "--data",
            str(data),
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(tmp_path),
    )
    dev = DevProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dev.pump, process.stdout, dev.stdout)
            nursery.start_soon(dev.pump, process.stderr, dev.stderr)
            await dev.wait_for(dev.stdout, "stateroom listening on http://127.0.0.1:")
            assert any("deployed version 1" in line for line in dev.stdout), dev.output()
            app_py = folder / "app.py"
            async with httpx.AsyncClient(base_url=dev.url, timeout=10) as http:
                # The listening line comes once the app is deployed: it answers at once.
                r = await http.get("/a")
                assert (r.status_code, r.text) == (200, "v1:1"), dev.output()

                # Same size, same second: the edit must still be seen.
                app_py.write_text(rewrite(app_py.read_text(), "VERSION = 'v1'", "VERSION = 'v2'"))
                await get_until(http, "/a", "v2:", dev)
                await dev.wait_for(dev.stdout, "deployed version 2")
                assert any("app.py changed" in line for line in dev.stdout), dev.output()

                # A broken edit: the error is shown, the last good code keeps serving.
                good = app_py.read_text()
                app_py.write_text(good + "\nraise RuntimeError('half-written edit')\n")
                await dev.wait_for(dev.stderr, "RuntimeError: half-written edit")
                assert any("still serving version 2" in line for line in dev.stderr), dev.output()
                assert any('app.py", line' in line for line in dev.stderr), dev.output()
                assert (await http.get("/a")).text.startswith("v2:")

                app_py.write_text(rewrite(good, "VERSION = 'v2'", "VERSION = 'v3'"))
                await get_until(http, "/a", "v3:", dev)
                # The new code can answer before the dev process prints its line.
                await dev.wait_for(dev.stdout, "deployed version 3")
                versions = [line for line in dev.stdout if "deployed version" in line]
                assert len(versions) == 3, dev.output()

            process.send_signal(signal.SIGINT)
            with trio.fail_after(30):
                code = await process.wait()
            assert code == 0, dev.output()
            async with httpx.AsyncClient(base_url=dev.url, timeout=2) as http:
                with pytest.raises(httpx.TransportError):
                    await http.get("/_stateroom/health")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_dev_mode_with_a_missing_config_exits_non_zero_with_one_line(tmp_path):
    out = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [sys.executable, "-m", "stateroom", "dev", str(tmp_path / "nope.toml")],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert out.returncode != 0
    assert out.stderr.startswith("error: config file not found")


def test_dev_arguments_split_config_from_serve_flags():
    assert split_args(
        ["--port", "0", "app/stateroom.toml", "--debug", "--workers=2", "--data", "d"]
    ) == (
        "app/stateroom.toml",
        ["--port", "0", "--debug", "--workers=2", "--data", "d"],
        {"--data": "d"},
    )
    assert split_args([]) == ("stateroom.toml", [], {})
