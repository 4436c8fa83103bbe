"""Test app for alarms: an object that records every alarm run in its storage.

`configure(fail_times=K, again_ms=D, again_times=N, sleep_first_s=S)`: the first
run sleeps S seconds after recording itself (so a test can crash the runtime while
a handler runs; runs that complete are marked "done"); the first K runs raise; after
each of the first N successful runs the handler sets the next alarm D ms later;
`rolled_back_set=True`: the handler sets an alarm inside a transaction it rolls back.
"""

import time

import trio

from stateroom import DurableObject


class Alarmed(DurableObject):
    async def set_alarm(self, when):
        await self.ctx.storage.set_alarm(when)
        return await self.ctx.storage.get_alarm()

    async def get_alarm(self):
        return await self.ctx.storage.get_alarm()

    async def delete_alarm(self):
        await self.ctx.storage.delete_alarm()
        return await self.ctx.storage.get_alarm()

    async def delete_all(self):
        await self.ctx.storage.delete_all()
        return await self.ctx.storage.get_alarm()

    async def configure(self, **cfg):
        await self.ctx.storage.put("cfg", cfg)

    async def firings(self):
        return await self.ctx.storage.get("firings") or []

    async def alarm(self, info):
        at = time.time() * 1000
        firings = await self.ctx.storage.get("firings") or []
        firings.append(
            {
                "at": at,
                "scheduled": info.scheduled_time,
                "retry": info.retry_count,
                "is_retry": info.is_retry,
                "name": self.ctx.id.name,
                "alarm_inside": await self.ctx.storage.get_alarm(),
            }
        )
        await self.ctx.storage.put("firings", firings)
        cfg = await self.ctx.storage.get("cfg") or {}
        if len(firings) == 1 and cfg.get("sleep_first_s"):
            await trio.sleep(cfg["sleep_first_s"])
        failed_before = sum(1 for f in firings[:-1] if f.get("failed"))
        if failed_before < cfg.get("fail_times", 0):
            firings[-1]["failed"] = True
            await self.ctx.storage.put("firings", firings)
            raise RuntimeError(f"alarm failure {failed_before + 1}")
        if cfg.get("rolled_back_set"):
            storage = self.ctx.storage

            async def set_then_roll_back(txn):
                await storage.set_alarm(at + 60_000)
                txn.rollback()

            await storage.transaction(set_then_roll_back)
            firings[-1]["inside_after_rollback"] = await storage.get_alarm()
        firings[-1]["done"] = True
        await self.ctx.storage.put("firings", firings)
        again = cfg.get("again_times", 0)
        if again and len(firings) - failed_before <= again:
            await self.ctx.storage.set_alarm(at + cfg["again_ms"])


class Bare(DurableObject):
    """An alarm handler declared without the alarm_info parameter."""

    async def set_alarm(self, when):
        await self.ctx.storage.set_alarm(when)

    async def runs(self):
        return await self.ctx.storage.get("runs") or 0

    async def alarm(self):
        await self.ctx.storage.put("runs", await self.runs() + 1)
