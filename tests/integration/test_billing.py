"""Billing (SPEC §12): exact counts per class and object, the price table, persistence."""

import json
import sys

import apsw
import httpx
import pytest
import trio

from tests.conftest import APPS

METERS_APP = str(APPS / "meters" / "stateroom.toml")
FIGURES = [
    "requests",
    "ws_messages_in",
    "billable_requests",
    "cpu_ms",
    "active_s",
    "gb_s",
    "rows_read",
    "rows_written",
    "stored_bytes",
    "cost_usd",
]
DEFAULT_PRICES = {
    "requests_per_million": 0.15,
    "gb_s_per_million": 12.50,
    "rows_read_per_million": 0.001,
    "rows_written_per_million": 1.00,
    "stored_gb_month": 0.20,
}


def expected_cost(g, prices, stored_gb_months=0.0):
    return (
        g["billable_requests"] / 1e6 * prices["requests_per_million"]
        + g["gb_s"] / 1e6 * prices["gb_s_per_million"]
        + g["rows_read"] / 1e6 * prices["rows_read_per_million"]
        + g["rows_written"] / 1e6 * prices["rows_written_per_million"]
        + stored_gb_months * prices["stored_gb_month"]
    )


def group_of(doc, *, name=None, cls=None):
    for g in doc["groups"]:
        if (name is None or g["name"] == name) and (cls is None or g["class"] == cls):
            return g
    raise AssertionError(f"no group name={name} class={cls} in {doc['groups']}")


async def api(rt, path, **params):
    async with httpx.AsyncClient(
        base_url=rt.url, headers={"authorization": f"Bearer {rt.token}"}
    ) as http:
        return await http.get(path, params=params)


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_billing_counts_exactly_the_requests_made_per_object_and_class(stateroom_runtime):
    rt = stateroom_runtime
    async with httpx.AsyncClient(base_url=rt.url) as http:
        for _ in range(7):
            assert (await http.get("/alice")).status_code == 200
    bob = rt.namespace("METER").get_by_name("bob")
    for _ in range(5):
        assert await bob.hit() == "ok"
    for _ in range(3):
        assert (await bob.fetch("/")).status == 200

    by_object = await rt.client.billing(group_by="object")
    assert by_object["group_by"] == "object"
    alice, bob_g = group_of(by_object, name="alice"), group_of(by_object, name="bob")
    assert alice["requests"] == 7, alice
    assert bob_g["requests"] == 8, bob_g
    assert alice["class"] == bob_g["class"] == "Meter"
    assert bob_g["object"] == str(bob.id)
    for g in (alice, bob_g):
        assert set(FIGURES) | {"class", "object", "name"} <= set(g)

    by_class = await rt.client.billing(group_by="class")
    meter = group_of(by_class, cls="Meter")
    assert meter["object"] is None and meter["name"] is None
    assert meter["requests"] == 15
    assert by_class["total"]["requests"] == 15
    # A second look counts nothing new.
    assert (await rt.client.billing())["total"]["requests"] == 15


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_billable_requests_gb_s_and_cost_follow_the_default_price_table(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("METER").get_by_name("priced")
    for _ in range(4):
        await stub.hit()
    await stub.write(3)
    doc = await rt.client.billing(group_by="object")
    assert doc["prices"] == DEFAULT_PRICES
    for g in [*doc["groups"], doc["total"]]:
        assert g["billable_requests"] == pytest.approx(g["requests"] + g["ws_messages_in"] / 20)
        assert g["gb_s"] == pytest.approx(g["active_s"] * 0.125)
        # Storage: at most the current size for the window (≤ 2 minutes), in GB-months.
        storage = g["stored_bytes"] / 1e9 * 120 / (30 * 86400) * DEFAULT_PRICES["stored_gb_month"]
        assert expected_cost(g, DEFAULT_PRICES) <= g["cost_usd"] * (1 + 1e-9)
        assert g["cost_usd"] <= expected_cost(g, DEFAULT_PRICES) + storage + 1e-15
        assert g["active_s"] > 0 and g["cpu_ms"] > 0 and g["stored_bytes"] > 0
    for key in FIGURES:
        assert doc["total"][key] == pytest.approx(sum(g[key] for g in doc["groups"]))


async def test_a_custom_price_file_prices_every_figure(tmp_path):
    from stateroom.testing import open_runtime

    prices = {
        "requests_per_million": 1_000_000.0,  # $1 per request
        "gb_s_per_million": 8_000_000.0,  # $8 per GB-s = $1 per active second
        "rows_read_per_million": 0.0,
        "rows_written_per_million": 0.0,
        "stored_gb_month": 0.0,
    }
    path = tmp_path / "prices.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in prices.items()))
    async with open_runtime(
        tmp_path / "data", workers=1, prices=str(path), config=METERS_APP
    ) as rt:
        stub = rt.namespace("METER").get_by_name("custom")
        for _ in range(3):
            await stub.hit()
        doc = await rt.client.billing(group_by="object")
        assert doc["prices"] == prices
        g = group_of(doc, name="custom")
        assert g["requests"] == 3
        assert g["cost_usd"] == pytest.approx(3 + g["active_s"], rel=1e-6)
        assert doc["total"]["cost_usd"] == pytest.approx(g["cost_usd"])


async def test_a_bad_price_file_stops_serve_with_one_clear_line(tmp_path):
    bad = tmp_path / "prices.toml"
    bad.write_text("requests_per_million = -1\n")
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("requests_per_billion = 1\n")
    for path, words in [
        (bad, "requests_per_million"),
        (unknown, "requests_per_billion"),
        (tmp_path / "missing.toml", "cannot read"),
    ]:
        with trio.fail_after(60):
            proc = await trio.run_process(
                [
                    sys.executable,
                    "-m",
                    "stateroom.supervisor",
                    "--data",
                    str(tmp_path / "d"),
                    "--port",
                    "0",
                    "--workers",
                    "1",
                    "--prices",
                    str(path),
                ],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        err = proc.stderr.decode()
        assert proc.returncode != 0 and "--prices" in err and words in err, err
        assert b"listening" not in proc.stdout


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_cpu_is_charged_to_the_object_that_spins_not_to_one_that_waits(stateroom_runtime):
    rt = stateroom_runtime
    ns = rt.namespace("METER")
    spinner, sleeper = ns.get_by_name("spinner"), ns.get_by_name("sleeper")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(spinner.burn, 0.4)
        nursery.start_soon(sleeper.nap, 1.0)
    doc = await rt.client.billing(group_by="object")
    spin, nap = group_of(doc, name="spinner"), group_of(doc, name="sleeper")
    assert spin["cpu_ms"] >= 350, spin
    assert nap["cpu_ms"] < 100, nap
    assert nap["active_s"] >= 0.9, nap


@pytest.mark.stateroom(config=METERS_APP, workers=1, evict_after=1)
async def test_active_seconds_stop_when_the_object_leaves_memory(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("METER").get_by_name("brief")
    await stub.hit()

    async def in_memory():
        return sum(p["objects_active"] for p in await rt.processes() if p["role"] == "worker")

    with trio.fail_after(20):
        while await in_memory() == 0:  # the worker reports every second
            await trio.sleep(0.05)
        while await in_memory() != 0:  # evicted after 1 s idle
            await trio.sleep(0.05)
    first = group_of(await rt.client.billing(group_by="object"), name="brief")
    assert 0.9 <= first["active_s"] < 6, first
    await trio.sleep(1.5)  # time passing, not waiting for state: nothing may accrue
    again = group_of(await rt.client.billing(group_by="object"), name="brief")
    assert again["active_s"] == first["active_s"]


@pytest.mark.stateroom(config=METERS_APP, workers=1)
async def test_stored_bytes_follow_the_data_and_drop_to_zero_on_delete(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("METER").get_by_name("hoard")
    await stub.write(50)
    g = group_of(await rt.client.billing(group_by="object"), name="hoard")
    assert g["stored_bytes"] > 0
    await rt.client.delete_object("METER", str(stub.id))
    g = group_of(await rt.client.billing(group_by="object"), name="hoard")
    assert g["stored_bytes"] == 0 and g["requests"] == 1


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_meters_survive_a_graceful_restart(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("METER").get_by_name("durable")
    for _ in range(6):
        await stub.hit()
    await rt.restart()
    doc = await rt.client.billing(group_by="object")
    assert group_of(doc, name="durable")["requests"] == 6
    await rt.namespace("METER").get_by_name("durable").hit()
    assert group_of(await rt.client.billing(group_by="object"), name="durable")["requests"] == 7


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_meters_reach_disk_within_five_seconds_and_survive_kill_9(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("METER").get_by_name("crashy")
    for _ in range(9):
        await stub.hit()
    db = apsw.Connection(str(rt.data / "runtime.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        with trio.fail_after(7):  # 1 s worker report + 4 s persist period, plus slack
            while True:
                rows = list(db.execute("SELECT coalesce(sum(requests), 0) FROM meters"))
                if rows[0][0] == 9:
                    break
                await trio.sleep(0.1)
    finally:
        db.close()
    await rt.restart(kill=True)
    doc = await rt.client.billing(group_by="object")
    assert group_of(doc, name="crashy")["requests"] == 9


@pytest.mark.stateroom(config=METERS_APP, workers=1)
async def test_billing_windows_and_bad_parameters(stateroom_runtime):
    rt = stateroom_runtime
    await rt.namespace("METER").get_by_name("w").hit()
    recent = (await api(rt, "/_stateroom/v1/billing", since="1h")).json()
    assert recent["total"]["requests"] == 1
    assert recent["since"].endswith("Z") and recent["until"].endswith("Z")
    old = (
        await api(
            rt,
            "/_stateroom/v1/billing",
            since="2000-01-01T00:00:00Z",
            until="2000-01-02T00:00:00+00:00",
        )
    ).json()
    assert old["groups"] == [] and old["total"]["requests"] == 0
    for params, words in [
        ({"group_by": "shard"}, "group_by"),
        ({"since": "yesterday"}, "ISO 8601"),
        ({"since": "1h", "until": "2h"}, "after"),
    ]:
        r = await api(rt, "/_stateroom/v1/billing", **params)
        assert r.status_code == 400 and words in r.text, (params, r.status_code, r.text)
    # The runtime keeps serving.
    assert (await api(rt, "/_stateroom/v1/billing")).status_code == 200


@pytest.mark.stateroom(config=METERS_APP, workers=1)
async def test_billing_command_prints_a_table_and_the_json_document(stateroom_runtime):
    rt = stateroom_runtime
    for _ in range(2):
        await rt.namespace("METER").get_by_name("cli").hit()
    base = [sys.executable, "-m", "stateroom", "billing", "--url", rt.url, "--token", rt.token]
    with trio.fail_after(60):
        out = await trio.run_process(
            [*base, "--json", "--group-by", "object", "--since", "1h"],
            capture_stdout=True,
            capture_stderr=True,
        )
        doc = json.loads(out.stdout)
        assert doc["group_by"] == "object" and group_of(doc, name="cli")["requests"] == 2
        out = await trio.run_process(
            [*base],
            capture_stdout=True,
            capture_stderr=True,
            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        )
        text = out.stdout.decode()
        assert "Meter" in text and "TOTAL" in text, text
        bad = await trio.run_process(
            [*base, "--since", "last tuesday"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    err = bad.stderr.decode().strip()
    assert bad.returncode != 0 and len(err.splitlines()) == 1 and "bad time" in err, err


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_billing_counts_exactly_the_socket_messages_and_requests(stateroom_runtime):
    rt = stateroom_runtime
    room = rt.namespace("METER").get_by_name("room")
    n_rpc, m_messages = 4, 45
    for _ in range(n_rpc):
        await room.hit()
    async with room.web_socket("/ws") as ws:
        for i in range(m_messages):
            await ws.send_message(f"m{i}")
            assert await ws.get_message() == f"m{i}"
    doc = await rt.client.billing(group_by="object")
    g = group_of(doc, name="room")
    # The upgrade is a fetch: one request more than the RPC calls.
    assert g["requests"] == n_rpc + 1, g
    assert g["ws_messages_in"] == m_messages, g
    assert g["billable_requests"] == pytest.approx(n_rpc + 1 + m_messages / 20)
    by_class = group_of(await rt.client.billing(group_by="class"), cls="Meter")
    assert by_class["requests"] == n_rpc + 1 and by_class["ws_messages_in"] == m_messages
