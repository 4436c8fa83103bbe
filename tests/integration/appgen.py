"""Writes small throwaway apps (app.py + stateroom.toml) for the deployment tests.

Each app is a counter whose replies carry a code version string, so a test can
tell which deployment answered. `hold(started, release)` lets a test keep an event
in flight: it creates the file `started`, then waits until `release` exists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLASS = """
class {name}(DurableObject):
    async def fetch(self, request):
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        return Response(f"{{VERSION}}:{{count}}")

    async def increment(self, by=1):
        count = (await self.ctx.storage.get("count") or 0) + by
        await self.ctx.storage.put("count", count)
        return count

    async def get(self):
        return await self.ctx.storage.get("count") or 0

    async def version(self):
        return VERSION

    async def class_name(self):
        return type(self).__name__

    async def hold(self, started, release):
        open(started, "w").close()
        while not os.path.exists(release):
            await trio.sleep(0.01)
        return VERSION
"""

DEFAULT = """
class Default(WorkerEntrypoint):
    async def fetch(self, request):
        name = request.url_path.strip("/") or "global"
        return await getattr(self.env, {binding!r}).get_by_name(name).fetch(request)
"""


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


def write_app(
    folder: Path,
    *,
    version: str = "v1",
    classes: tuple[str, ...] = ("Counter",),
    bindings: dict[str, str] | None = None,
    migrations: list[dict[str, Any]] | None = None,
    default_binding: str | None = "COUNTER",
    extra: str = "",
) -> Path:
    """Write `folder/app.py` and `folder/stateroom.toml`; returns the toml path."""
    folder.mkdir(parents=True, exist_ok=True)
    if bindings is None:
        bindings = {"COUNTER": classes[0]}
    if migrations is None:
        migrations = [{"tag": "v1", "new_sqlite_classes": list(classes)}]
    code = [
        "import os",
        "import trio",
        "from stateroom import DurableObject, Response, WorkerEntrypoint",
        "",
        f"VERSION = {version!r}",
    ]
    code += [CLASS.format(name=c) for c in classes]
    if default_binding is not None:
        code.append(DEFAULT.format(binding=default_binding))
    code.append(extra)
    (folder / "app.py").write_text("\n".join(code) + "\n")
    toml = ['name = "gen"', 'main = "app.py"', ""]
    for b, c in bindings.items():
        toml += [
            "[[durable_objects.bindings]]",
            f"name = {toml_value(b)}",
            f"class_name = {toml_value(c)}",
            "",
        ]
    for m in migrations:
        toml.append("[[migrations]]")
        toml += [f"{k} = {toml_value(v)}" for k, v in m.items()]
        toml.append("")
    (folder / "stateroom.toml").write_text("\n".join(toml))
    return folder / "stateroom.toml"


ROOM = """
import trio
from stateroom import DurableObject, Response, WebSocketPair

VERSION = {version!r}


class Room(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.constructed_by = VERSION

    async def fetch(self, request):
        client, server = WebSocketPair()
        self.ctx.accept_web_socket(server)
        return Response(status=101, web_socket=client)

    async def web_socket_message(self, ws, message):
        ws.send(f"{{VERSION}}:{{message}}")

    async def version(self):
        return VERSION
"""


def write_room_app(
    folder: Path, *, version: str, class_name: str = "Room", renamed_from: str | None = None
) -> Path:
    """An app with one WebSocket room class; replies carry the code version."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(
        ROOM.format(version=version).replace("class Room(", f"class {class_name}(")
    )
    toml = (
        'name = "rooms"\nmain = "app.py"\n\n[[durable_objects.bindings]]\nname = "ROOM"\n'
        f'class_name = "{class_name}"\n\n[[migrations]]\ntag = "v1"\nnew_sqlite_classes = ["{renamed_from or class_name}"]\n'
    )
    if renamed_from:
        toml += f'\n[[migrations]]\ntag = "v2"\nrenamed_classes = [{{from = "{renamed_from}", to = "{class_name}"}}]\n'
    (folder / "stateroom.toml").write_text(toml)
    return folder / "stateroom.toml"
