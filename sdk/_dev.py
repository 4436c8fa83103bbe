"""`stateroom dev [CONFIG] [serve flags]`: serve, deploy, and redeploy on every change.

The dev process is a client of its own runtime. It starts the supervisor as a child
process (`python -m stateroom.supervisor <serve flags>`; user code never runs there),
deploys the app, prints the supervisor's `stateroom listening on http://HOST:PORT`
line (after the first deploy was tried, so the app answers once it appears), then
watches the app's folder (watchfiles) and redeploys after every change to a
`.py` or `.toml` file. Like `stateroom deploy`, it imports the app module only to
pickle it; the runtime runs the code in its workers.

Invariants:
  * The server keeps running the last good deployment: a module that fails to
    import, or a deploy the runtime refuses, is shown (with the user's traceback)
    and changes nothing; the next edit is tried again.
  * Every reload is announced on stdout: what changed, then the deployed version or
    the error (errors on stderr).
  * The data folder is never watched (it may sit inside the app folder).
  * SIGINT/SIGTERM stop the supervisor gracefully and dev exits 0; if the supervisor
    exits on its own, dev exits with its code (1 if that was 0). A supervisor whose
    dev process dies without cleaning up gets SIGTERM from the kernel (Linux).

Token: `--token`, else `STATEROOM_TOKEN`, else the token file of the data folder
(`--data`, `STATEROOM_DATA`, default `./.stateroom`), read once the server listens.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from pathlib import Path

import httpx
import msgspec
import trio

from ._bundle import payload_from_config_path
from ._client import Client, connect
from ._config import ConfigError, load_config

USAGE = """usage: stateroom dev [CONFIG] [serve flags]

Serve the app of CONFIG (default ./stateroom.toml), deploy it, and redeploy it
whenever a .py or .toml file in its folder changes. Serve flags are those of
`stateroom serve` (see `stateroom serve --help`)."""

# Serve flags that take no value; every other serve flag takes exactly one.
SWITCHES = frozenset({"--fault-injection", "--metrics-public", "--debug"})
# Serve flags dev reads for itself (all are also passed on to the supervisor).
OWN = frozenset({"--data", "--token"})

_STATEROOM_DIR = str(Path(__file__).resolve().parent)


class UsageError(Exception):
    pass


def split_args(argv: list[str]) -> tuple[str, list[str], dict[str, str]]:
    """Split `[CONFIG] [serve flags]` into (config, serve flags, {flag: value} for OWN)."""
    config: str | None = None
    serve: list[str] = []
    own: dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            raise UsageError("")
        if arg.startswith("-"):
            if "=" in arg:
                flag, value = arg.split("=", 1)
                serve.append(arg)
            elif arg in SWITCHES:
                serve.append(arg)
                i += 1
                continue
            else:
                if i + 1 >= len(argv):
                    raise UsageError(f"{arg} needs a value")
                flag, value = arg, argv[i + 1]
                serve += [arg, value]
                i += 1
            if flag in OWN:
                own[flag] = value
        elif config is None:
            config = arg
        else:
            raise UsageError(f"unexpected argument {arg!r} (only one CONFIG)")
        i += 1
    return config or "stateroom.toml", serve, own


def user_traceback(exc: BaseException) -> str:
    """The error of a failed import, with stateroom's own frames left out."""
    cause = exc.__cause__ or exc
    tb = traceback.extract_tb(cause.__traceback__)
    frames = [
        f
        for f in tb
        if not f.filename.startswith(_STATEROOM_DIR)
        and f.filename != "<frozen importlib._bootstrap>"
    ]
    text = ""
    if frames:
        text += "Traceback (most recent call last):\n" + "".join(traceback.format_list(frames))
    return text + "".join(traceback.format_exception_only(type(cause), cause))


def _die_with_parent() -> None:
    """In the supervisor child, before exec: get SIGTERM when the dev process dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort, Linux only
        pass


class DevSession:
    def __init__(self, config: Path, serve_args: list[str], own: dict[str, str]) -> None:
        self.config = config
        self.folder = config.parent
        self.serve_args = serve_args
        self.data = Path(
            own.get("--data") or os.environ.get("STATEROOM_DATA") or ".stateroom"
        ).resolve()
        self.token_arg = own.get("--token")
        self.url: str | None = None
        # Set once the supervisor printed its listening line (or exited).
        self.listening = trio.Event()
        self.process: trio.Process | None = None
        # True once dev itself decided to stop (signal): a supervisor exit is then expected.
        self.stopping = False
        self.exit_code = 0
        # Version of the last successful deployment, None until the first.
        self.version: int | None = None

    # ------------------------------------------------------------------ output

    def say(self, message: str) -> None:
        print(f"stateroom dev: {message}", flush=True)

    def warn(self, message: str) -> None:
        print(f"stateroom dev: {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            self.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "stateroom.supervisor", *self.serve_args],
                stdout=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                # Its own session: a terminal's Ctrl-C reaches dev only, which then
                # stops the server gracefully (workers never see a stray SIGINT).
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            nursery.start_soon(self._pump_stdout)
            nursery.start_soon(self._watch_process, nursery)
            nursery.start_soon(self._watch_signals, nursery)
            await self.listening.wait()
            if self.url is None:
                return self.exit_code
            token = self.token_arg or os.environ.get("STATEROOM_TOKEN") or self._token_file()
            try:
                async with connect(self.url, token) as client:
                    await self.deploy(client, "initial deploy")
                    print(f"stateroom listening on {self.url}", flush=True)
                    await self.watch(client)
            except Exception as exc:  # noqa: BLE001 - one clear line, then stop the server
                self.warn(f"{type(exc).__name__}: {exc}")
                self.exit_code = 1
                self.stopping = True
                await self.stop_server()
                nursery.cancel_scope.cancel()
        return self.exit_code

    async def stop_server(self) -> None:
        """SIGTERM the supervisor and wait for it (SIGKILL after 30 s)."""
        assert self.process is not None
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGTERM)
            with trio.move_on_after(30):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()

    def _token_file(self) -> str | None:
        try:
            return (self.data / "token").read_text().strip()
        except OSError:
            return None

    async def _pump_stdout(self) -> None:
        """Pass the supervisor's stdout through; spot the listening line."""
        assert self.process is not None and self.process.stdout is not None
        buf = b""
        async for chunk in self.process.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                text = line.decode("utf-8", "replace")
                if self.url is None and text.startswith("stateroom listening on "):
                    # Printed by `run` once the first deploy was tried, so whoever
                    # waits for this line finds the app deployed.
                    self.url = text.split(" on ", 1)[1].strip()
                    self.listening.set()
                    continue
                print(text, flush=True)

    async def _watch_process(self, nursery: trio.Nursery) -> None:
        assert self.process is not None
        code = await self.process.wait()
        if not self.stopping:
            if self.url is None:
                self.warn(f"the server did not start (exit code {code})")
            else:
                self.warn(f"the server exited with code {code}")
            self.exit_code = code or 1
        self.listening.set()
        nursery.cancel_scope.cancel()

    async def _watch_signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        self.stopping = True
        self.say("stopping")
        await self.stop_server()
        self.exit_code = 0
        nursery.cancel_scope.cancel()

    # ------------------------------------------------------------------ deploy

    async def deploy(self, client: Client, why: str) -> bool:
        """Import, pickle and deploy the app once; report the outcome. True on success."""
        try:
            payload = payload_from_config_path(self.config)
        except ConfigError as exc:
            keep = (
                f"still serving version {self.version}"
                if self.version
                else "nothing is deployed yet"
            )
            self.warn(f"{why}: the app failed to import; {keep}\n{user_traceback(exc)}")
            return False
        keep = (
            f"still serving version {self.version}" if self.version else "nothing is deployed yet"
        )
        try:
            r = await client._request(  # noqa: SLF001 - the SDK's own client
                "POST",
                "/_stateroom/v1/deployments",
                content=msgspec.msgpack.encode(payload),
                headers={"content-type": "application/x-msgpack"},
            )
        except httpx.HTTPError as exc:
            self.warn(f"{why}: could not reach the server ({keep}): {type(exc).__name__}: {exc}")
            return False
        if r.status_code != 200:
            self.warn(f"{why}: {r.text.strip()} ({keep})")
            return False
        result = r.json()
        await client.refresh()
        self.version = result["version"]
        applied = result.get("applied") or []
        extra = f" (migrations: {', '.join(applied)})" if applied else ""
        self.say(f"deployed version {self.version}{extra}")
        return True

    async def watch(self, client: Client) -> None:
        import anyio
        from watchfiles import PythonFilter, awatch

        stop = anyio.Event()
        watch_filter = PythonFilter(extra_extensions=(".toml",), ignore_paths=[str(self.data)])
        self.say(f"watching {self.folder} for changes (Ctrl-C to stop)")
        try:
            async for changes in awatch(
                self.folder, watch_filter=watch_filter, stop_event=stop, rust_timeout=500
            ):
                names = sorted({str(Path(path).relative_to(self.folder)) for _, path in changes})
                self.say(f"{', '.join(names)} changed; redeploying")
                await self.deploy(client, "reload")
        finally:
            stop.set()


def main(argv: list[str]) -> None:
    try:
        config_arg, serve_args, own = split_args(argv)
    except UsageError as exc:
        if str(exc):
            print(f"error: {exc}\n{USAGE}", file=sys.stderr)
            sys.exit(2)
        print(USAGE)
        sys.exit(0)
    try:
        _, folder = load_config(config_arg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    config = Path(config_arg)
    config = (config / "stateroom.toml" if config.is_dir() else config).resolve()
    # Edited files must be compiled afresh at every reload.
    sys.dont_write_bytecode = True
    session = DevSession(config, serve_args, own)
    try:
        code = trio.run(session.run)
    except KeyboardInterrupt:
        code = 0
    sys.exit(code)


__all__ = ["main", "split_args", "DevSession"]
