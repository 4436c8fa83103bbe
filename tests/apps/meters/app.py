"""Test app for meters and billing: one object class with cheap, CPU-heavy and idle work."""

import time

import trio

from stateroom import DurableObject, Response, WebSocketPair, WorkerEntrypoint


class Meter(DurableObject):
    async def fetch(self, request):
        if request.url_path == "/ws":
            client, server = WebSocketPair()
            self.ctx.accept_web_socket(server)
            return Response(status=101, web_socket=client)
        count = (await self.ctx.storage.get("count") or 0) + 1
        await self.ctx.storage.put("count", count)
        return Response(str(count))

    async def hit(self):
        return "ok"

    async def write(self, n):
        await self.ctx.storage.put({f"k{i}": i for i in range(n)})
        return n

    async def burn(self, seconds):
        """Spin on the CPU for `seconds` of thread CPU time."""
        end = time.thread_time() + seconds
        x = 0
        while time.thread_time() < end:
            x += 1
        return x

    async def nap(self, seconds):
        """Wait without using the CPU."""
        await trio.sleep(seconds)
        return "rested"

    async def web_socket_message(self, ws, message):
        ws.send(message)


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.METER.get_by_name(request.url_path.strip("/").split("/")[0] or "global")
        return await stub.fetch(request)
