"""Meters and billing: every object's usage per minute, persisted, priced on demand.

Workers count usage where it happens (`stateroom.worker.meters`) and report
deltas in their `Stats` message every second (and at once on `FlushMeters`).
This extension of the supervisor:

* aggregates the deltas per (minute, namespace key, object id) in memory
  (`pending`), the minute being the supervisor's clock at receipt;
* persists `pending` to the `meters` table of the runtime database every
  `PERSIST_EVERY` seconds in one transaction, and at shutdown after asking every
  worker for its last deltas; so a supervisor crash loses at most the last
  ~5 s (4 s here plus the worker's 1 s reporting period);
* answers `GET /_stateroom/v1/billing` (SPEC §12), `GET /_stateroom/v1/usage`
  (running totals for the dashboard) and `GET /_stateroom/metrics` (Prometheus).

Figures (per object, summed per class): `requests` (fetch + RPC + alarm),
`ws_messages_in`, `billable_requests = requests + ws_messages_in / 20`, `cpu_ms`
(thread CPU time, see the worker side), `active_s` (wall time in memory and not
hibernated), `gb_s = active_s × 0.125` (128 MiB per object), `rows_read`,
`rows_written`, `stored_bytes` (the object's files on disk at the end of the
window) and `cost_usd`.

Storage cost. `stored_bytes` is a level, not a counter: each minute row holds the
object's size when last reported in that minute, and the size holds until the
next row (a deleted object gets a row of size 0). Storage is billed as the time
integral of that step function over the window, in GB-months:
`Σ size × seconds / 10^9 / (30 × 86400)`, times `stored_gb_month`. A size counts
from the end of the minute in which it was reported (storage is charged for whole
minutes held, so a change of size takes effect up to a minute late).

Retention and roll-up. A row of the `meters` table covers `span` minutes from
`minute`: 1 for the rows `persist()` writes. So that the runtime database does
not grow with every minute of every object forever, `roll_up()` (run by `serve`
after each persist, a bounded amount of work at a time) merges old rows into
coarser ones (`ROLL_UPS`):

* rows older than 7 days become one row per object per hour;
* rows older than 400 days become one row per object per day, kept for good.

So an object costs at most ~10,100 minute rows plus ~9,400 hour rows, plus one
row per day it was used for longer history. A rolled row holds the sums of the
counters of the rows it replaces, the size at its end (`stored_bytes`), and
`byte_s`: the storage integral over its own span, computed from the finer rows and
the size carried in from before. Nothing is counted twice or lost: the totals
of every figure are unchanged by a roll-up, and a billing window whose ends lie
on the boundaries of the rows it touches (minutes for the last 7 days, hours up
to 400 days, days beyond; the default window, since the data began, always does)
gets exactly the figures it got before the roll-up, including storage. A window
that starts or ends inside a rolled row counts that row's counters in full (as a
window covers every minute it overlaps) and the overlapping share of its `byte_s`.
The progress of each roll-up is kept in the `settings` table
(`meters_rolled_<span>`: every bucket below that minute is rolled), and a delta
recorded with an older time (a clock stepped back by days) is booked in the first
minute not rolled up, so rows never overlap.

Windows. Usage is kept per minute (per hour or day for older rows, see above),
so a billing window `[since, until)` covers every row it overlaps. Deltas not
persisted yet are included in every answer, and billing first asks the workers
for their latest deltas, so a request answered before the billing call is always
counted.

Invariant: `totals`, `sizes` and `pending` together equal the persisted rows plus
everything received since; `persist()` moves `pending` into the database and
`roll_up()` merges rows, neither changing that sum. Rows of one object never
overlap in time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import re
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import trio

from stateroom._billing import BILLING_FIGURES
from stateroom._protocol import FlushMeters, HttpResponse, Stats

__all__ = ["Meters", "Prices", "load_prices", "parse_time"]

# Seconds between two persists of `pending` (plus ≤ 1 s of worker reporting: ≤ 5 s lost).
PERSIST_EVERY = 4.0
GB = 10**9
MONTH_S = 30 * 86400
GB_PER_OBJECT = 0.125  # 128 MiB per active object, as Durable Objects bill duration
WS_MESSAGES_PER_REQUEST = 20

# Roll-ups, finest first: (bucket size in minutes, age in minutes after which a
# bucket's finer rows are merged into one row per object).
ROLL_UPS = ((60, 7 * 1440), (1440, 400 * 1440))
MAX_SPAN = 1440  # the largest `span` of a row
# Work `roll_up()` does per call from `serve` (one bucket is finished past it).
ROLL_UP_BUDGET_S = 0.05

# Index in a meter row / accumulator.
REQ, WS, CPU, ACT, RR, RW = range(6)
FIGURES = ("requests", "ws_messages_in", "cpu_ms", "active_s", "rows_read", "rows_written")


@dataclasses.dataclass(frozen=True)
class Prices:
    """USD amounts (defaults: the public Durable Objects prices, no free allowance)."""

    requests_per_million: float = 0.15
    gb_s_per_million: float = 12.50
    rows_read_per_million: float = 0.001
    rows_written_per_million: float = 1.00
    stored_gb_month: float = 0.20

    def cost(
        self,
        billable_requests: float,
        gb_s: float,
        rows_read: float,
        rows_written: float,
        stored_gb_months: float,
    ) -> float:
        return (
            billable_requests / 1e6 * self.requests_per_million
            + gb_s / 1e6 * self.gb_s_per_million
            + rows_read / 1e6 * self.rows_read_per_million
            + rows_written / 1e6 * self.rows_written_per_million
            + stored_gb_months * self.stored_gb_month
        )


def load_prices(path: Path | str | None) -> Prices:
    """The price table of `--prices FILE.toml` (missing keys keep their default).

    Raises ValueError naming the file and the problem: unreadable file, bad TOML,
    an unknown key, or a value that is not a number ≥ 0.
    """
    if path is None:
        return Prices()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ValueError(f"--prices {path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--prices {path}: not valid TOML: {exc}") from None
    if isinstance(doc.get("prices"), dict) and len(doc) == 1:
        doc = doc["prices"]
    known = {f.name for f in dataclasses.fields(Prices)}
    values: dict[str, float] = {}
    for key, value in doc.items():
        if key not in known:
            raise ValueError(
                f"--prices {path}: unknown key {key!r} (known: {', '.join(sorted(known))})"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"--prices {path}: {key} must be a number >= 0, not {value!r}")
        values[key] = float(value)
    return Prices(**values)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now: float) -> float:
    """Epoch seconds of an ISO 8601 time (naive = UTC) or a duration back from `now`.

    Raises ValueError with the accepted forms.
    """
    s = text.strip()
    m = _DURATION.fullmatch(s)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        when = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"bad time {text!r}: use an ISO 8601 time (2025-01-31T12:00:00Z) or a duration"
            " back from now (90s, 15m, 1h, 7d)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def iso(t: float) -> str:
    return (
        dt.datetime.fromtimestamp(t, tz=dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    """Length of `[a, b)` ∩ `[lo, hi)`."""
    return max(0.0, min(b, hi) - max(a, lo))


def storage_integral(
    size: int, rows: list[tuple[int, int, int, float | None]], start: float, end: float
) -> tuple[float, int]:
    """Byte-seconds of storage held over `[start, end)`, and the size after `rows`.

    `size` is the size before the first row; `rows` are one object's
    `(minute, span, stored_bytes, byte_s)` in time order, not overlapping. A row's
    `stored_bytes` holds from the row's end until the next row. Within a row the
    size is the one carried in when `byte_s` is None (minute rows: a change takes
    effect at the end of its minute), else `byte_s` is the row's own integral
    (rolled rows), spread evenly over its span for a partial overlap.
    """
    total = 0.0
    t = start
    for minute, span, row_size, byte_s in rows:
        row_start, row_end = minute * 60.0, (minute + span) * 60.0
        total += size * _overlap(t, row_start, start, end)
        inside = _overlap(row_start, row_end, start, end)
        total += size * inside if byte_s is None else byte_s * inside / (row_end - row_start)
        t = max(t, row_end)
        size = int(row_size)
    total += size * _overlap(t, end, start, end)
    return total, size


class _Bad(Exception):
    """A client error in a meters route (HTTP 400)."""


def _json(obj: Any, status: int = 200) -> HttpResponse:
    import json

    return HttpResponse(status, [("content-type", "application/json")], json.dumps(obj).encode())


def _text(text: str, status: int) -> HttpResponse:
    return HttpResponse(
        status, [("content-type", "text/plain; charset=utf-8")], (text + "\n").encode()
    )


class Meters:
    """The supervisor extension that aggregates, persists and prices meters."""

    def __init__(self, sup: Any, prices: Prices | None = None) -> None:
        self.sup = sup
        self.db = sup.db
        self.prices = prices if prices is not None else load_prices(sup.settings.prices)
        # (minute, ns_key, id) -> [requests, ws, cpu_ms, active_s, rows_read,
        # rows_written, stored_bytes]: received and not yet persisted.
        self.pending: dict[tuple[int, int, str], list[Any]] = {}
        # ns_key -> cumulative figures since the data began (Prometheus, dashboard).
        self.totals: dict[int, list[float]] = {}
        # (ns_key, id) -> latest known size in bytes; `size_total` is their sum.
        self.sizes: dict[tuple[int, str], int] = {}
        self.size_total = 0
        # Storage cost accrued since this supervisor started (dashboard cost rate).
        self.storage_usd = 0.0
        # First minute with any meter row (None: no data yet).
        self.first_minute: int | None = None
        # ns_key -> class label (live classes by name; deleted ones marked).
        self.classes: dict[int, str] = {}
        # Bucket span -> minute below which every row is rolled up to that span
        # (mirrors `meters_rolled_<span>` in the settings table; only grows).
        self.rolled: dict[int, int] = {}
        self._setup()

    # ------------------------------------------------------------------ state

    def _setup(self) -> None:
        conn = self.db.conn
        with conn:
            conn.execute(
                "CREATE INDEX IF NOT EXISTS meters_by_object ON meters(ns_key, id, minute);"
                "CREATE TABLE IF NOT EXISTS meter_classes("
                " ns_key INTEGER PRIMARY KEY, class_name TEXT NOT NULL)"
            )
        for row in conn.execute(
            "SELECT ns_key, sum(requests), sum(ws_messages_in), sum(cpu_ms), sum(active_s),"
            " sum(rows_read), sum(rows_written) FROM meters GROUP BY ns_key"
        ):
            self.totals[int(row[0])] = [float(v or 0) for v in row[1:]]
        for ns_key, oid, size, _ in conn.execute(
            "SELECT ns_key, id, stored_bytes, max(minute) FROM meters GROUP BY ns_key, id"
        ):
            if size:
                self.sizes[(int(ns_key), oid)] = int(size)
        self.size_total = sum(self.sizes.values())
        for (m,) in conn.execute("SELECT min(minute) FROM meters"):
            self.first_minute = None if m is None else int(m)
        for span, _ in ROLL_UPS:
            self.rolled[span] = int(self.db.setting(f"meters_rolled_{span}") or 0)
        self._refresh_classes()

    def _refresh_classes(self) -> None:
        conn = self.db.conn
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO meter_classes(ns_key, class_name)"
                " SELECT key, class_name FROM namespaces WHERE class_name IS NOT NULL"
            )
        live = {
            int(k): c
            for k, c in conn.execute("SELECT key, class_name FROM namespaces WHERE deleted IS NULL")
        }
        classes = {}
        for k, c in conn.execute("SELECT ns_key, class_name FROM meter_classes"):
            classes[int(k)] = c if int(k) in live else f"{c} (deleted)"
        classes.update(live)
        self.classes = classes

    def class_of(self, ns_key: int) -> str:
        return self.classes.get(ns_key) or f"namespace {ns_key}"

    def record(self, rows: list[list[Any]], now: float | None = None) -> None:
        """Add worker deltas `[ns_key, id, req, ws, cpu_ms, active_s, rr, rw, size]`."""
        minute = int((time.time() if now is None else now) // 60)
        # Never inside a rolled-up row (only a clock stepped back by days gets here).
        minute = max(minute, self.rolled[ROLL_UPS[0][0]])
        if self.first_minute is None or minute < self.first_minute:
            self.first_minute = minute
        for row in rows:
            try:
                ns_key, oid = int(row[0]), str(row[1])
                delta = [
                    int(row[2]),
                    int(row[3]),
                    float(row[4]),
                    float(row[5]),
                    int(row[6]),
                    int(row[7]),
                ]
                size = int(row[8])
            except (TypeError, ValueError, IndexError):
                print(f"stateroom: meters: ignored a malformed row {row!r}", file=sys.stderr)
                continue
            key = (ns_key, oid)
            if size < 0:
                size = self.sizes.get(key, 0)
            self._set_size(key, size)
            p = self.pending.get((minute, ns_key, oid))
            if p is None:
                self.pending[(minute, ns_key, oid)] = [*delta, size]
            else:
                for i in range(6):
                    p[i] += delta[i]
                p[6] = size
            t = self.totals.get(ns_key)
            if t is None:
                t = self.totals[ns_key] = [0.0] * 6
            for i in range(6):
                t[i] += delta[i]

    def _set_size(self, key: tuple[int, str], size: int) -> None:
        old = self.sizes.get(key, 0)
        if size:
            self.sizes[key] = size
        else:
            self.sizes.pop(key, None)
        self.size_total += size - old

    def persist(self) -> None:
        """Write `pending` to the runtime database in one transaction."""
        if not self.pending:
            return
        pending, self.pending = self.pending, {}
        try:
            with self.db.transaction():
                self.db.conn.executemany(
                    "INSERT INTO meters(minute, ns_key, id, requests, ws_messages_in, cpu_ms,"
                    " active_s, rows_read, rows_written, stored_bytes)"
                    " VALUES(?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT(minute, ns_key, id) DO UPDATE SET"
                    " requests = requests + excluded.requests,"
                    " ws_messages_in = ws_messages_in + excluded.ws_messages_in,"
                    " cpu_ms = cpu_ms + excluded.cpu_ms,"
                    " active_s = active_s + excluded.active_s,"
                    " rows_read = rows_read + excluded.rows_read,"
                    " rows_written = rows_written + excluded.rows_written,"
                    " stored_bytes = excluded.stored_bytes",
                    [(m, k, oid, *v) for (m, k, oid), v in pending.items()],
                )
        except Exception as exc:  # noqa: BLE001 - keep the deltas for the next try
            print(f"stateroom: meters: could not persist: {exc!r}", file=sys.stderr, flush=True)
            for key, v in pending.items():
                p = self.pending.get(key)
                if p is None:
                    self.pending[key] = v
                else:
                    for i in range(6):
                        p[i] += v[i]

    def roll_up(self, now: float | None = None, budget_s: float = math.inf) -> int:
        """Merge rows old enough into hour, then day rows (see Retention); returns
        the number of buckets rolled.

        Each bucket is one transaction (it holds every row of one hour or day, at
        most a few rows per object); the call returns once `budget_s` seconds have
        passed after a bucket, and the next call goes on from there.
        """
        now_minute = int((time.time() if now is None else now) // 60)
        deadline = time.monotonic() + budget_s
        rolled = 0
        for span, after in ROLL_UPS:
            cutoff = (now_minute - after) // span * span
            while True:
                mark = self.rolled[span]
                oldest = None
                for (m,) in self.db.conn.execute(
                    "SELECT min(minute) FROM meters WHERE minute >= ? AND minute < ? AND span < ?",
                    (mark, cutoff, span),
                ):
                    oldest = m
                if oldest is None:
                    if cutoff > mark:
                        with self.db.transaction():
                            self.db.set_setting(f"meters_rolled_{span}", str(cutoff))
                        self.rolled[span] = cutoff
                    break
                self._roll_bucket(int(oldest) // span * span, span)
                rolled += 1
                if time.monotonic() >= deadline:
                    return rolled
        return rolled

    def _roll_bucket(self, start: int, span: int) -> None:
        """Replace the finer rows of minutes `[start, start + span)` by one row per object."""
        conn = self.db.conn
        end = start + span
        with self.db.transaction():
            rows = list(
                conn.execute(
                    "SELECT ns_key, id, minute, span, requests, ws_messages_in, cpu_ms, active_s,"
                    " rows_read, rows_written, stored_bytes, byte_s FROM meters"
                    " WHERE minute >= ? AND minute < ? AND span < ? ORDER BY ns_key, id, minute",
                    (start, end, span),
                )
            )
            merged = []
            for (ns_key, oid), group in itertools.groupby(rows, key=lambda r: (r[0], r[1])):
                parts = list(group)
                carried = 0
                for (size,) in conn.execute(
                    "SELECT stored_bytes FROM meters WHERE ns_key = ? AND id = ? AND minute < ?"
                    " ORDER BY minute DESC LIMIT 1",
                    (ns_key, oid, start),
                ):
                    carried = int(size)
                byte_s, size = storage_integral(
                    carried, [(r[2], r[3], r[10], r[11]) for r in parts], start * 60.0, end * 60.0
                )
                sums = [sum(r[4 + i] for r in parts) for i in range(6)]
                merged.append((start, ns_key, oid, *sums, size, span, byte_s))
            conn.execute(
                "DELETE FROM meters WHERE minute >= ? AND minute < ? AND span < ?",
                (start, end, span),
            )
            conn.executemany(
                "INSERT INTO meters(minute, ns_key, id, requests, ws_messages_in, cpu_ms,"
                " active_s, rows_read, rows_written, stored_bytes, span, byte_s)"
                " VALUES(?,?,?,?,?,?,?,?,?,?,?,?)",
                merged,
            )
            self.db.set_setting(f"meters_rolled_{span}", str(end))
        self.rolled[span] = end
        if self.first_minute is not None and merged:
            self.first_minute = min(self.first_minute, start)

    async def collect(self, timeout: float = 2.0) -> None:
        """Ask every ready worker for the deltas it has counted so far, and wait."""
        from .workers import WorkerState

        pool = self.sup.pool

        async def one(w: Any) -> None:
            try:
                await pool.request(w, FlushMeters, wait_ready=0)
            except Exception:  # noqa: BLE001 - a worker restarting reports nothing more
                pass

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                for w in pool.workers:
                    if w.state is WorkerState.READY:
                        nursery.start_soon(one, w)

    # ------------------------------------------------------------------ extension hooks

    def on_worker_message(self, worker: Any, msg: Any) -> bool:
        if isinstance(msg, Stats) and msg.meters:
            self.record(msg.meters)
        return False

    def on_object_deleted(self, ns_key: int, object_id: str) -> None:
        self.record([[ns_key, object_id, 0, 0, 0.0, 0.0, 0, 0, 0]])

    async def on_deploy(self, dep: Any, plan: Any) -> None:
        self._refresh_classes()
        live = {
            int(k)
            for (k,) in self.db.conn.execute("SELECT key FROM namespaces WHERE deleted IS NULL")
        }
        gone = [[k, oid, 0, 0, 0.0, 0.0, 0, 0, 0] for (k, oid) in self.sizes if k not in live]
        if gone:
            self.record(gone)

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        last = time.monotonic()
        next_persist = last + PERSIST_EVERY
        while True:
            await trio.sleep(1.0)
            now = time.monotonic()
            self.storage_usd += (
                self.size_total / GB * (now - last) / MONTH_S * self.prices.stored_gb_month
            )
            last = now
            if now >= next_persist:
                self.persist()
                self.roll_up(budget_s=ROLL_UP_BUDGET_S)
                next_persist = now + PERSIST_EVERY

    async def stop(self) -> None:
        await self.collect()
        self.persist()

    async def route(
        self, request: Any, parts: list[str], query: dict[str, str]
    ) -> HttpResponse | None:
        if request.method != "GET":
            return None
        try:
            if parts == ["v1", "billing"]:
                return _json(
                    await self.billing(
                        query.get("since") or None,
                        query.get("until") or None,
                        query.get("group_by") or "class",
                    )
                )
            if parts == ["v1", "usage"]:
                return _json(self.usage())
            if parts == ["metrics"]:
                return await self.metrics_response()
        except _Bad as exc:
            return _text(str(exc), 400)
        return None

    async def public_route(self, request: Any, path: str) -> HttpResponse | None:
        if (
            self.sup.settings.metrics_public
            and request.method == "GET"
            and path == "/_stateroom/metrics"
        ):
            return await self.metrics_response()
        return None

    # ------------------------------------------------------------------ billing

    async def billing(
        self, since: str | None = None, until: str | None = None, group_by: str = "class"
    ) -> dict[str, Any]:
        """The SPEC §12 billing document. Raises `_Bad` for bad parameters."""
        if group_by not in ("class", "object"):
            raise _Bad(f"group_by must be 'class' or 'object', not {group_by!r}")
        now = time.time()
        try:
            until_t = None if until is None else parse_time(until, now)
            since_t = None if since is None else parse_time(since, now)
        except ValueError as exc:
            raise _Bad(str(exc)) from None
        if since_t is not None and until_t is not None and since_t > until_t:
            raise _Bad(f"since ({iso(since_t)}) is after until ({iso(until_t)})")
        await self.collect()
        now = time.time()
        if until_t is None:
            until_t = now
        if since_t is None:
            since_t = (
                until_t if self.first_minute is None else min(until_t, self.first_minute * 60.0)
            )
        if since_t > until_t:
            raise _Bad(f"since ({iso(since_t)}) is after until ({iso(until_t)})")
        objects = self._usage_by_object(since_t, until_t, min(until_t, time.time()))
        groups: list[dict[str, Any]] = []
        if group_by == "object":
            names: dict[int, dict[str, str]] = {}
            for (ns_key, oid), acc in objects.items():
                if ns_key not in names:
                    names[ns_key] = self.db.names(ns_key)
                groups.append(self._group(self.class_of(ns_key), oid, names[ns_key].get(oid), acc))
        else:
            by_class: dict[int, list[float]] = {}
            for (ns_key, _), acc in objects.items():
                c = by_class.get(ns_key)
                if c is None:
                    by_class[ns_key] = list(acc)
                else:
                    for i in range(len(acc)):
                        c[i] += acc[i]
            groups = [self._group(self.class_of(k), None, None, acc) for k, acc in by_class.items()]
        groups.sort(key=lambda g: (g["class"], g["object"] or ""))
        return {
            "since": iso(since_t),
            "until": iso(until_t),
            "group_by": group_by,
            "groups": groups,
            "total": self._total(groups),
            "prices": dataclasses.asdict(self.prices),
        }

    def _group(
        self, cls: str, oid: str | None, name: str | None, acc: list[float]
    ) -> dict[str, Any]:
        requests, ws = int(acc[REQ]), int(acc[WS])
        billable = requests + ws / WS_MESSAGES_PER_REQUEST
        active_s = round(acc[ACT], 3)
        gb_s = active_s * GB_PER_OBJECT
        rows_read, rows_written = int(acc[RR]), int(acc[RW])
        gb_months = acc[7] / GB / MONTH_S
        return {
            "class": cls,
            "object": oid,
            "name": name,
            "requests": requests,
            "ws_messages_in": ws,
            "billable_requests": billable,
            "cpu_ms": round(acc[CPU], 3),
            "active_s": active_s,
            "gb_s": gb_s,
            "rows_read": rows_read,
            "rows_written": rows_written,
            "stored_bytes": int(acc[6]),
            "cost_usd": self.prices.cost(billable, gb_s, rows_read, rows_written, gb_months),
        }

    @staticmethod
    def _total(groups: list[dict[str, Any]]) -> dict[str, Any]:
        total: dict[str, Any] = {}
        for key in BILLING_FIGURES:
            total[key] = sum((g[key] for g in groups), 0)
        total["billable_requests"] = (
            total["requests"] + total["ws_messages_in"] / WS_MESSAGES_PER_REQUEST
        )
        for key in ("cpu_ms", "active_s"):
            total[key] = round(total[key], 3)
        total["gb_s"] = total["active_s"] * GB_PER_OBJECT
        return total

    def _usage_by_object(
        self, since_t: float, until_t: float, storage_end: float
    ) -> dict[tuple[int, str], list[float]]:
        """(ns_key, id) -> [req, ws, cpu, active, rr, rw, size at until, byte-seconds]."""
        m0 = math.floor(since_t / 60)
        m1 = max(m0 + 1, math.ceil(until_t / 60)) if until_t > since_t else m0
        # (ns, id) -> {minute: [req, ws, cpu, act, rr, rw, size, span, byte_s]}: every
        # row that overlaps minutes [m0, m1).
        series: dict[tuple[int, str], dict[int, list[Any]]] = {}
        for row in self.db.conn.execute(
            "SELECT ns_key, id, minute, requests, ws_messages_in, cpu_ms, active_s, rows_read,"
            " rows_written, stored_bytes, span, byte_s FROM meters"
            " WHERE minute > ? AND minute < ? AND minute + span > ?",
            (m0 - MAX_SPAN, m1, m0),
        ):
            series.setdefault((int(row[0]), row[1]), {})[int(row[2])] = list(row[3:])
        for (minute, ns_key, oid), v in self.pending.items():
            if m0 <= minute < m1:
                s = series.setdefault((ns_key, oid), {})
                p = s.get(minute)
                if p is None:
                    s[minute] = [*v, 1, None]
                else:
                    s[minute] = [*(a + b for a, b in zip(p[:6], v[:6], strict=True)), v[6], *p[7:]]
        # Size carried into the window from the rows that end before it.
        carried: dict[tuple[int, str], int] = {}
        for ns_key, oid, size, _ in self.db.conn.execute(
            "SELECT ns_key, id, stored_bytes, max(minute) FROM meters"
            " WHERE minute < ? AND minute + span <= ? GROUP BY ns_key, id",
            (m0, m0),
        ):
            carried[(int(ns_key), oid)] = int(size)
        for (minute, ns_key, oid), v in self.pending.items():
            if minute < m0:
                carried[(ns_key, oid)] = int(v[6])
        out: dict[tuple[int, str], list[float]] = {}
        for key in set(series) | {k for k, s in carried.items() if s}:
            acc = [0.0] * 8
            rows = sorted(series.get(key, {}).items())
            for _, v in rows:
                for i in range(6):
                    acc[i] += v[i]
            acc[7], acc[6] = storage_integral(
                carried.get(key, 0),
                [(minute, v[7], v[6], v[8]) for minute, v in rows],
                since_t,
                storage_end,
            )
            if any(acc):
                out[key] = acc
        return out

    # ------------------------------------------------------------------ live figures

    def usage(self) -> dict[str, Any]:
        """Running totals since the data began (the dashboard charts their rates).

        `cost_usd` is the cost of every counted figure plus the storage cost accrued
        since this supervisor started: its increase over an interval is the cost of
        that interval.
        """
        t = [0.0] * 6
        for v in self.totals.values():
            for i in range(6):
                t[i] += v[i]
        billable = t[REQ] + t[WS] / WS_MESSAGES_PER_REQUEST
        gb_s = t[ACT] * GB_PER_OBJECT
        cost = self.prices.cost(billable, gb_s, t[RR], t[RW], 0.0) + self.storage_usd
        return {
            "time": time.time(),
            "totals": {
                "requests": int(t[REQ]),
                "ws_messages_in": int(t[WS]),
                "billable_requests": billable,
                "cpu_ms": round(t[CPU], 3),
                "active_s": round(t[ACT], 3),
                "gb_s": gb_s,
                "rows_read": int(t[RR]),
                "rows_written": int(t[RW]),
                "stored_bytes": self.size_total,
                "cost_usd": cost,
            },
        }

    def by_class(self) -> dict[str, dict[str, float]]:
        """Cumulative figures and current stored bytes per class label."""
        out: dict[str, dict[str, float]] = {}
        for ns_key, v in self.totals.items():
            d = out.setdefault(
                self.class_of(ns_key), dict.fromkeys((*FIGURES, "stored_bytes"), 0.0)
            )
            for i, name in enumerate(FIGURES):
                d[name] += v[i]
        for (ns_key, _), size in self.sizes.items():
            d = out.setdefault(
                self.class_of(ns_key), dict.fromkeys((*FIGURES, "stored_bytes"), 0.0)
            )
            d["stored_bytes"] += size
        return out

    async def metrics_response(self) -> HttpResponse:
        from .metrics import render_metrics

        await self.collect()
        body, content_type = render_metrics(self.by_class(), self.sup.processes())
        return HttpResponse(200, [("content-type", content_type)], body)
