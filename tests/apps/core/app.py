"""Test app for the runtime core: echo RPC, errors, object-to-object calls, ids, env."""

import os

from stateroom import DurableObject, Response, WorkerEntrypoint


class CustomProblem(Exception):
    pass


class Echo(DurableObject):
    def __init__(self, ctx, env):
        super().__init__(ctx, env)
        self.constructed_pid = os.getpid()

    async def echo(self, *args, **kwargs):
        return [args, kwargs]

    async def whoami(self):
        return {
            "id": str(self.ctx.id),
            "name": self.ctx.id.name,
            "pid": os.getpid(),
            "greeting": self.env.GREETING,
        }

    async def raise_builtin(self, message):
        raise KeyError(message)

    async def raise_value(self, message):
        raise ValueError(message)

    async def raise_custom(self, message):
        raise CustomProblem(message)

    async def return_unencodable(self):
        return object()

    async def call_other(self, name, by):
        stub = self.env.COUNTER.get_by_name(name)
        return await stub.increment(by)

    async def fetch_other(self, name):
        stub = self.env.COUNTER.get_by_name(name)
        response = await stub.fetch("http://do/x", method="POST")
        return [response.status, await response.text()]

    async def call_self(self):
        stub = self.env.ECHO.get(self.ctx.id)
        return await stub.echo("via-self")

    async def id_of(self, name):
        return self.env.COUNTER.id_from_name(name)

    async def fetch(self, request):
        if request.url_path == "/boom":
            raise RuntimeError("fetch exploded")
        return Response.json(
            {
                "method": request.method,
                "path": request.url_path,
                "query": request.query.get_all("q"),
                "header": request.headers.get_all("x-multi"),
                "body": (await request.text()),
            }
        )

    async def _private(self):
        return "never"


class Counter(DurableObject):
    async def fetch(self, request):
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        return Response(str(count))

    async def increment(self, by=1):
        count = (await self.ctx.storage.get("count") or 0) + by
        await self.ctx.storage.put("count", count)
        return count

    async def get(self):
        return await self.ctx.storage.get("count") or 0

    async def pid(self):
        return os.getpid()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = request.url_path.strip("/").split("/")
        if parts[0] == "echo":
            return await self.env.ECHO.get_by_name(parts[1] if len(parts) > 1 else "e").fetch(
                request
            )
        if parts[0] == "boom":
            raise RuntimeError("default exploded")
        if parts[0] == "headers":
            # Response headers as the app sets them: repeated, mixed case, a wrong
            # content-length (the runtime frames the body), or a value from the query.
            headers = [
                ("Set-Cookie", "a=1"),
                ("X-Mixed-Case", "kept"),
                ("Set-Cookie", "b=2"),
                ("Content-Length", "999"),
            ]
            if request.query.get("value") is not None:
                headers.append(("x-value", request.query.get("value")))
            return Response("hello", headers=headers)
        if parts[0] == "where":
            # Which worker ran Default, and which owns the counter it calls.
            owner = await self.env.COUNTER.get_by_name(parts[1]).pid()
            return Response.json({"default_pid": os.getpid(), "object_pid": owner})
        stub = self.env.COUNTER.get_by_name(parts[0] or "global")
        return await stub.fetch(request)
