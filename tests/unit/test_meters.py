"""Meters without processes: time parsing, the price table, storage integration,
the supervisor's per-minute ledger, and the worker's report and CPU instrument."""

import time
import types
from pathlib import Path

import pytest
import trio

from stateroom.supervisor.meters import Meters, Prices, load_prices, parse_time
from stateroom.supervisor.runtime_db import RuntimeDB
from stateroom.worker.catalog import Counters
from stateroom.worker.limits import Watchdog
from stateroom.worker.meters import WorkerMeters, meters_enabled

NOW = 1_800_000_000.0


def test_parse_time_takes_durations_back_from_now_and_iso_8601():
    assert parse_time("90s", NOW) == NOW - 90
    assert parse_time("15m", NOW) == NOW - 900
    assert parse_time("1h", NOW) == NOW - 3600
    assert parse_time("7d", NOW) == NOW - 7 * 86400
    assert parse_time("2030-01-01T00:00:00Z", NOW) == 1893456000
    assert parse_time("2030-01-01T01:00:00+01:00", NOW) == 1893456000
    assert parse_time("2030-01-01T00:00:00", NOW) == 1893456000  # naive is UTC
    for bad in ["", "yesterday", "1y", "-5m", "2030-13-01"]:
        with pytest.raises(ValueError, match="ISO 8601"):
            parse_time(bad, NOW)


def test_price_file_keys_defaults_and_refusals(tmp_path):
    assert load_prices(None) == Prices()
    p = tmp_path / "p.toml"
    p.write_text("requests_per_million = 2\nstored_gb_month = 0.5\n")
    prices = load_prices(p)
    assert prices.requests_per_million == 2.0 and prices.stored_gb_month == 0.5
    assert prices.gb_s_per_million == 12.5  # missing keys keep the default
    p.write_text("[prices]\nrows_read_per_million = 3\n")
    assert load_prices(p).rows_read_per_million == 3.0
    for text, words in [
        ("requests = 1\n", "unknown key 'requests'"),
        ("requests_per_million = 'cheap'\n", "must be a number"),
        ("requests_per_million = -1\n", "must be a number >= 0"),
        ("requests_per_million = true\n", "must be a number"),
        ("not toml [", "not valid TOML"),
    ]:
        p.write_text(text)
        with pytest.raises(ValueError, match=words):
            load_prices(p)
    with pytest.raises(ValueError, match="cannot read"):
        load_prices(tmp_path / "missing.toml")


def test_cost_uses_every_price_with_websocket_messages_at_twenty_to_one():
    p = Prices()
    assert p.cost(1e6, 0, 0, 0, 0) == pytest.approx(0.15)
    assert p.cost(0, 1e6, 0, 0, 0) == pytest.approx(12.50)
    assert p.cost(0, 0, 1e6, 0, 0) == pytest.approx(0.001)
    assert p.cost(0, 0, 0, 1e6, 0) == pytest.approx(1.00)
    assert p.cost(0, 0, 0, 0, 1) == pytest.approx(0.20)


def make_meters(tmp_path: Path, prices: Prices | None = None) -> Meters:
    db = RuntimeDB(tmp_path / "runtime.sqlite")
    db.conn.execute(
        "INSERT INTO namespaces(key, class_name, secret, created) VALUES(7, 'Room', x'00', 0)"
    )
    db.record_name(7, "a" * 64, "alice")
    sup = types.SimpleNamespace(
        db=db,
        settings=types.SimpleNamespace(prices=None, metrics_public=False),
        pool=types.SimpleNamespace(workers=[]),
    )
    return Meters(sup, prices)


def row(oid, req=0, ws=0, cpu=0.0, act=0.0, rr=0, rw=0, size=0):
    return [7, oid, req, ws, cpu, act, rr, rw, size]


async def test_ledger_sums_per_object_and_class_before_and_after_persisting(tmp_path):
    m = make_meters(tmp_path)
    a, b = "a" * 64, "b" * 64
    now = time.time()
    m.record([row(a, req=3, ws=40, cpu=1.5, act=2.0, rr=10, rw=4, size=4096)], now=now - 120)
    m.record(
        [row(a, req=2, cpu=0.5, act=1.0, size=8192), row(b, req=1, act=0.5, size=100)], now=now
    )
    before = await m.billing(group_by="object")
    m.persist()
    assert m.pending == {}
    after = await m.billing(group_by="object")
    for doc in (before, after):
        groups = {g["object"]: g for g in doc["groups"]}
        ga = groups[a]
        assert ga["class"] == "Room" and ga["name"] == "alice"
        assert (ga["requests"], ga["ws_messages_in"], ga["rows_read"], ga["rows_written"]) == (
            5,
            40,
            10,
            4,
        )
        assert ga["billable_requests"] == 5 + 40 / 20
        assert ga["cpu_ms"] == 2.0 and ga["active_s"] == 3.0 and ga["gb_s"] == 3.0 * 0.125
        assert ga["stored_bytes"] == 8192
        assert groups[b]["name"] is None and groups[b]["requests"] == 1
        assert doc["total"]["requests"] == 6
    assert strip_cost(before["groups"]) == strip_cost(after["groups"])
    by_class = await m.billing(group_by="class")
    assert [g["class"] for g in by_class["groups"]] == ["Room"]
    assert by_class["groups"][0]["requests"] == 6 and by_class["groups"][0]["object"] is None
    # A restart reads the same ledger back.
    again = make_meters_again(m)
    assert strip_cost((await again.billing(group_by="object"))["groups"]) == strip_cost(
        after["groups"]
    )


def strip_cost(groups):
    """Groups without cost_usd (storage keeps accruing between two calls)."""
    return [{k: v for k, v in g.items() if k != "cost_usd"} for g in groups]


def make_meters_again(m: Meters) -> Meters:
    return Meters(m.sup, m.prices)


async def test_storage_is_billed_as_gb_months_held_in_the_window(tmp_path):
    m = make_meters(tmp_path, Prices(0, 0, 0, 0, stored_gb_month=0.20))
    month = 30 * 86400
    start = (time.time() - 2 * month) // 60 * 60  # a minute boundary, two months ago
    m.record([row("a" * 64, req=1, size=10**9)], now=start + 1)  # 1 GB from the next minute
    m.persist()
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    doc = await m.billing(since=iso(start), until=iso(start + 60 + month), group_by="object")
    g = doc["groups"][0]
    assert g["stored_bytes"] == 10**9
    assert g["cost_usd"] == pytest.approx(0.20)  # one GB-month
    # Half the window, half the cost; a window that starts later carries the size in.
    doc = await m.billing(since=iso(start + 60 + month // 2), until=iso(start + 60 + month))
    assert doc["total"]["cost_usd"] == pytest.approx(0.10)
    # Deleted: the size drops to zero from the next minute on.
    m.on_object_deleted(7, "a" * 64)
    doc = await m.billing(since="1m", group_by="object")
    assert doc["total"]["stored_bytes"] == 0


async def test_usage_totals_and_class_figures_track_every_delta(tmp_path):
    m = make_meters(tmp_path)
    m.record([row("a" * 64, req=2, ws=20, act=8.0, size=50)])
    m.record([row("b" * 64, req=1, size=25)])
    u = m.usage()["totals"]
    assert u["requests"] == 3 and u["ws_messages_in"] == 20 and u["billable_requests"] == 4.0
    assert u["gb_s"] == 1.0 and u["stored_bytes"] == 75
    assert u["cost_usd"] == pytest.approx(4 / 1e6 * 0.15 + 1.0 / 1e6 * 12.5)
    assert m.by_class()["Room"]["requests"] == 3
    m.record(["garbage"])  # a malformed row is skipped, not fatal
    assert m.usage()["totals"]["requests"] == 3


class FakeDb:
    def __init__(self, ns_key, size):
        self.path = Path(f"/data/objects/{ns_key}/x.sqlite")
        self.size = size

    def size_bytes(self):
        return self.size


class FakeHost:
    """What the meters read of an ObjectHost (hashable by identity, like the real one)."""

    def __init__(self, oid, size=10):
        self.counters = Counters()
        self.db = FakeDb(3, size)
        self.target = types.SimpleNamespace(id=oid)
        self.instance = object()


def fake_host(oid, size=10):
    return FakeHost(oid, size)


def test_worker_report_zeroes_counters_and_reports_each_unit_once():
    h = fake_host("x" * 64, size=123)
    worker = types.SimpleNamespace(catalog={("C", h.target.id): h})
    m = WorkerMeters(worker, enabled=True)
    m.activated(h)
    m.count_request(h)
    m.count_request(h)
    h.counters.ws_messages_in += 3
    h.counters.rows_written += 2
    [r] = m.take()
    assert r[:4] == [3, "x" * 64, 2, 3] and r[6:] == [0, 2, 123]
    assert r[5] >= 0
    assert h.counters.requests == 0 and h.counters.rows_written == 0
    # Only active time accrues now; the next report has no requests.
    [r2] = m.take()
    assert r2[2] == 0 and r2[5] >= 0
    # Leaving memory: one final row with the size at that moment, then nothing.
    h.counters.requests += 1
    h.db.size = 0
    del worker.catalog[("C", h.target.id)]
    m.deactivated(h)
    [r3] = m.take()
    assert r3[2] == 1 and r3[8] == 0
    assert m.take() == []


def test_worker_meters_off_reports_nothing(monkeypatch):
    assert meters_enabled({"STATEROOM_METERS": "0"}) is False
    assert meters_enabled({}) is True
    h = fake_host("y" * 64)
    m = WorkerMeters(types.SimpleNamespace(catalog={"k": h}), enabled=False)
    m.activated(h)
    m.count_request(h)
    assert m.take() == []


async def test_events_pay_for_their_own_steps_only():
    # The CPU limit's wrapper charges each step of an event to its object's meter.
    busy, idle = fake_host("b" * 64), fake_host("i" * 64)
    watchdog = Watchdog(types.SimpleNamespace(index=0), cpu_limit=30.0)

    def charged(host, fn):
        async def run(*args):
            return await watchdog.metered(host, fn(*args))

        return run

    async def spin(seconds):
        for _ in range(4):  # several steps, each spinning
            end = time.thread_time() + seconds / 4
            while time.thread_time() < end:
                pass
            await trio.lowlevel.checkpoint()
        return "spun"

    async def wait():
        await trio.sleep(0.1)

    async def unowned():
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass

    async def failing():
        await trio.lowlevel.checkpoint()
        raise KeyError("boom")

    results = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _collect(results, charged(busy, spin)(0.08)))
        nursery.start_soon(charged(idle, wait))
        nursery.start_soon(unowned)
    assert results == ["spun"]
    assert 70 <= busy.counters.cpu_ms < 120, busy.counters.cpu_ms
    assert idle.counters.cpu_ms < 5, idle.counters.cpu_ms
    with pytest.raises(KeyError, match="boom"):
        await charged(idle, failing)()
    # Cancellation passes through the wrapper like through a plain await.
    with trio.move_on_after(0.01) as scope:
        await charged(idle, trio.sleep_forever)()
    assert scope.cancelled_caught


async def _collect(results, awaitable):
    results.append(await awaitable)


def figures(doc):
    """A billing document's groups and total, costs compared to 1e-9 relative."""
    out = []
    for g in [*doc["groups"], doc["total"]]:
        out.append(
            {
                k: pytest.approx(v, rel=1e-9, abs=1e-15) if isinstance(v, float) else v
                for k, v in g.items()
            }
        )
    return out


def spans(m: Meters) -> dict[int, int]:
    return dict(m.db.conn.execute("SELECT span, count(*) FROM meters GROUP BY span"))


async def test_old_rows_roll_up_to_hours_and_days_and_billing_stays_exact(tmp_path):
    m = make_meters(tmp_path)
    a, b = "a" * 64, "b" * 64
    now = time.time()
    until = (now - 60) // 60 * 60  # fixed, in the past: storage ends there too
    iso = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    day = 86400
    old_day = (now - 402 * day) // day * day  # a day boundary, 402 days ago
    old_hour = (now - 10 * day) // 3600 * 3600  # an hour boundary, 10 days ago
    # 402 days ago: two hours of minute rows (will become one day row).
    for k in range(5, 120, 11):
        m.record(
            [row(a, req=1, ws=2, cpu=0.25, act=0.5, rr=3, rw=1, size=100 * k)], now=old_day + 60 * k
        )
    # 10 days ago: three hours of minute rows for a (its size changing), two for b.
    for k in range(3, 180, 7):
        m.record(
            [row(a, req=1, ws=3, cpu=0.5, act=1.0, rr=2, rw=1, size=1000 + k)],
            now=old_hour + 60 * k,
        )
    m.record([row(b, req=2, size=500)], now=old_hour + 60 * 61 + 1)
    m.record([row(b, req=1, size=0)], now=old_hour + 60 * 150)
    # Recent minute rows, kept as they are.
    m.record([row(a, req=4, rw=2, size=5000)], now=now - 600)
    m.record([row(b, req=1, size=70)], now=now - 300)
    m.persist()
    windows = [
        (None, iso(until)),  # since the data began
        (iso(old_day), iso(old_day + day)),  # the old day, day-aligned
        (iso(old_day + day), iso(until)),  # from before the hour rows, across both bounds
        (iso(old_hour + 3600), iso(old_hour + 2 * 3600)),  # one old hour
        (iso(old_hour + 3600), iso(now - 450)),  # hour rows into minute rows
    ]
    before = {}
    for w in windows:
        for group_by in ("object", "class"):
            before[w, group_by] = await m.billing(*w, group_by=group_by)
    minute_rows = spans(m)[1]

    assert m.roll_up(now) == 2 + 1 + 3  # two old hours, then their day; three hours
    assert spans(m) == {1: 2, 60: 3 + 2, 1440: 1}, f"rows by span after roll-up (had {minute_rows})"
    assert m.roll_up(now) == 0  # nothing left to do; the next call starts where this stopped

    for (w, group_by), doc in before.items():
        after = await m.billing(*w, group_by=group_by)
        assert figures(after) == figures(doc), f"window {w} by {group_by}"
    # A window with a bound inside a rolled hour: that hour's counters count in full.
    doc = await m.billing(iso(old_hour + 3600 + 1800), iso(old_hour + 2 * 3600), group_by="object")
    hour_rows = [k for k in range(3, 180, 7) if 60 <= k < 120]
    assert {g["object"]: g["requests"] for g in doc["groups"]} == {a: len(hour_rows), b: 2}

    # The totals read back at a restart are unchanged, and the roll-up's progress too.
    usage = m.usage()["totals"]
    again = make_meters_again(m)
    assert again.usage()["totals"] | {"time": 0} == usage | {"time": 0}
    assert again.roll_up(now) == 0
    # A delta stamped inside a rolled hour (clock stepped back) still counts, once.
    again.record([row(a, req=1)], now=old_hour + 60)
    again.persist()
    doc = await again.billing(group_by="object")
    assert doc["total"]["requests"] == before[windows[0], "object"]["total"]["requests"] + 1


def test_a_runtime_database_of_an_earlier_version_reads_its_meter_rows_as_minutes(tmp_path):
    import apsw

    path = tmp_path / "runtime.sqlite"
    conn = apsw.Connection(str(path))
    conn.execute(
        "CREATE TABLE meters(minute INTEGER NOT NULL, ns_key INTEGER NOT NULL, id TEXT NOT NULL,"
        " requests INTEGER NOT NULL DEFAULT 0, ws_messages_in INTEGER NOT NULL DEFAULT 0,"
        " cpu_ms REAL NOT NULL DEFAULT 0, active_s REAL NOT NULL DEFAULT 0,"
        " rows_read INTEGER NOT NULL DEFAULT 0, rows_written INTEGER NOT NULL DEFAULT 0,"
        " stored_bytes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(minute, ns_key, id)) WITHOUT ROWID;"
        "INSERT INTO meters(minute, ns_key, id, requests) VALUES(1000, 7, 'x', 5)"
    )
    conn.close()
    db = RuntimeDB(path)
    assert list(db.conn.execute("SELECT minute, requests, span, byte_s FROM meters")) == [
        (1000, 5, 1, None)
    ]
