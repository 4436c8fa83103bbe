"""The crash campaign (SPEC §6, §8, §14): concurrent increments on many objects while
workers, and now and then the supervisor, are killed with -9, round after round.

Every increment carries a unique op id that the object appends to its `ops` table
in the same transaction as the count (never deduplicated), half through RPC and
half over HTTP through `Default`. A client retries only what the runtime calls
retryable (and a connection refused, which never reached it); anything else is
"unknown" and never retried. Afterwards, per object:

* every acknowledged increment is present, and the count equals the number of ops;
* no op is present twice: no retryable failure had a durable effect;
* only ops that were sent are present (acknowledged or unknown);
* never two live instances of one id: each instance records its life (start, last
  write) and checks on every write that it is still the recorded live one; lives
  never overlap and no instance ever wrote while another was live.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
from dataclasses import dataclass, field

import httpx
import pytest
import trio

import stateroom
from stateroom import DurableObjectError

from .helpers import APP, wait_replaced, workers

OBJECTS = 16
CLIENTS = 10


@dataclass
class Ledgerbook:
    """What the clients know: per object, acknowledged and unknown ops."""

    acked: dict[str, set[str]] = field(default_factory=dict)
    unknown: dict[str, set[str]] = field(default_factory=dict)
    sent: dict[str, set[str]] = field(default_factory=dict)
    retries: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def note(self, kind: str) -> None:
        self.failures[kind] = self.failures.get(kind, 0) + 1


class Unknown(Exception):
    """The outcome of an increment cannot be known: it must not be retried."""


async def increment_once(client, http, name: str, op: str, over_http: bool) -> None:
    """One attempt. Returns on acknowledgement; raises DurableObjectError(retryable)
    for a safe retry, `Unknown` otherwise."""
    if over_http:
        try:
            r = await http.get(f"/ledger/{name}/{op}")
        except httpx.ConnectError:
            raise DurableObjectError("connection refused", retryable=True) from None
        except httpx.TransportError as exc:
            raise Unknown(f"transport: {exc!r}") from None
        if r.status_code == 200:
            return
        if r.status_code == 503:
            raise DurableObjectError(r.text, retryable=True)
        raise Unknown(f"HTTP {r.status_code}: {r.text.strip()[:200]}")
    stub = client.namespace("LEDGER").get_by_name(name)
    try:
        await stub.apply(op)
    except DurableObjectError as exc:
        if exc.retryable:
            raise
        raise Unknown(f"{type(exc).__name__}: {exc}") from None
    except httpx.ConnectError:
        raise DurableObjectError("connection refused", retryable=True) from None
    except httpx.TransportError as exc:
        raise Unknown(f"transport: {exc!r}") from None


async def client_task(book: Ledgerbook, client, http, index: int, stop: trio.Event) -> None:
    rng = random.Random(index)
    for n in itertools.count():
        if stop.is_set():
            return
        name = f"ledger-{rng.randrange(OBJECTS)}"
        op = f"c{index}-{n}"
        over_http = rng.random() < 0.5
        book.sent[name].add(op)
        for _attempt in range(400):
            try:
                await increment_once(client, http, name, op, over_http)
            except DurableObjectError as exc:
                assert exc.retryable, exc
                book.retries += 1
                book.note(type(exc).__name__)
                await trio.sleep(0.02)
                continue
            except Unknown as exc:
                book.note(str(exc).split(":")[0])
                book.unknown[name].add(op)
                break
            book.acked[name].add(op)
            break
        else:
            book.unknown[name].add(op)


async def kill_a_worker(rt, rng: random.Random) -> None:
    victim = rng.choice(await workers(rt))
    os.kill(victim["pid"], signal.SIGKILL)
    await wait_replaced(rt, victim["index"], victim["pid"])


async def run_campaign(rt, rounds: int, supervisor_every: int, seed: int) -> Ledgerbook:
    rng = random.Random(seed)
    book = Ledgerbook()
    for i in range(OBJECTS):
        for d in (book.acked, book.unknown, book.sent):
            d[f"ledger-{i}"] = set()
    stop = trio.Event()
    async with (
        stateroom.connect(rt.url, rt.token, timeout=30) as client,
        httpx.AsyncClient(base_url=rt.url, timeout=30) as http,
    ):
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(client_task, book, client, http, i, stop)
            for r in range(rounds):
                await trio.sleep(rng.uniform(0.1, 0.25))
                if supervisor_every and r % supervisor_every == supervisor_every - 1:
                    await rt.restart(kill=True)
                else:
                    await kill_a_worker(rt, rng)
            await trio.sleep(0.3)
            stop.set()
        await check(rt, book)
    return book


async def check(rt, book: Ledgerbook) -> None:
    total_acked = 0
    for name in sorted(book.sent):
        report = await rt.namespace("LEDGER").get_by_name(name).report()
        ops = report["ops"]
        present = set(ops)
        doubled = sorted(op for op in present if ops.count(op) > 1)
        assert not doubled, f"{name}: ops applied twice: {doubled}"
        assert report["count"] == len(ops), f"{name}: count {report['count']} != {len(ops)} ops"
        lost = sorted(book.acked[name] - present)
        assert not lost, f"{name}: acknowledged ops lost: {lost}"
        stray = sorted(present - book.acked[name] - book.unknown[name])
        assert not stray, f"{name}: ops present that failed retryable or were never sent: {stray}"
        assert not report["violations"], f"{name}: {report['violations']}"
        lives = report["lives"]
        for (a, pid_a, _start_a, last_a), (b, pid_b, start_b, _) in itertools.pairwise(lives):
            assert last_a <= start_b, (
                f"{name}: instance {a} (pid {pid_a}) wrote at {last_a} after instance {b}"
                f" (pid {pid_b}) started at {start_b}"
            )
        total_acked += len(book.acked[name])
    assert total_acked > 50, f"the campaign acknowledged only {total_acked} increments"


@pytest.mark.stateroom(config=APP, workers=2)
async def test_thirty_rounds_of_kill_9_lose_no_acknowledged_increment_and_double_none(
    stateroom_runtime,
):
    book = await run_campaign(stateroom_runtime, rounds=30, supervisor_every=6, seed=7)
    # The campaign did hit calls in flight.
    assert book.retries + sum(len(u) for u in book.unknown.values()) > 0, book.failures


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("STATEROOM_SOAK"), reason="a soak run: set STATEROOM_SOAK=1")
@pytest.mark.timeout(1200)
@pytest.mark.stateroom(config=APP, workers=3)
async def test_three_hundred_rounds_of_kill_9_lose_no_acknowledged_increment(stateroom_runtime):
    await run_campaign(stateroom_runtime, rounds=300, supervisor_every=10, seed=11)
