"""The counter example: one Counter object per name, reached over HTTP through Default."""

from stateroom import DurableObject, Response, WorkerEntrypoint


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


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        stub = self.env.COUNTER.get_by_name(request.url_path.strip("/") or "global")
        return await stub.fetch(request)
