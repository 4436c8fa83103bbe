"""Benchmark app for alarms (bench/alarms.py).

`Ticker.start(plan)` stores a list of alarm times and sets the first; each alarm run
records its lateness (handler start minus scheduled time, ms) and sets the next.
`Ticker.seed(prefix, first, count, when)` sets a far alarm on `count` other tickers
through stubs (fast set-up of many pending alarms without one HTTP call each).
"""

import time

import trio

from stateroom import DurableObject


class Ticker(DurableObject):
    async def start(self, plan):
        await self.ctx.storage.put({"plan": plan, "i": 0, "late": []})
        await self.ctx.storage.set_alarm(plan[0])

    async def alarm(self, info):
        late = time.time() * 1000 - info.scheduled_time
        got = await self.ctx.storage.get(["plan", "i", "late"])
        i = got["i"] + 1
        await self.ctx.storage.put({"i": i, "late": got["late"] + [late]})
        if i < len(got["plan"]):
            await self.ctx.storage.set_alarm(got["plan"][i])

    async def tick(self, when):
        """The storage work of one alarm run, done over RPC (the benchmark's baseline)."""
        got = await self.ctx.storage.get(["plan", "i", "late"])
        await self.ctx.storage.put({"i": (got.get("i") or 0) + 1, "late": got.get("late") or []})
        await self.ctx.storage.set_alarm(when)

    async def result(self):
        return await self.ctx.storage.get("late") or []

    async def ping(self):
        return None

    async def set_far(self, when):
        await self.ctx.storage.set_alarm(when)

    async def seed(self, prefix, first, count, when, concurrency=32):
        limiter = trio.CapacityLimiter(concurrency)

        async def one(n):
            async with limiter:
                await self.env.TICKER.get_by_name(f"{prefix}{n}").set_far(when)

        async with trio.open_nursery() as nursery:
            for n in range(first, first + count):
                nursery.start_soon(one, n)
        return count
