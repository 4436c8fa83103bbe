"""`/_stateroom/metrics` (SPEC §12): Prometheus text that prometheus-client parses."""

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import APPS

METERS_APP = str(APPS / "meters" / "stateroom.toml")
CLASS_FAMILIES = {
    "stateroom_requests": "counter",
    "stateroom_ws_messages_in": "counter",
    "stateroom_cpu_ms": "counter",
    "stateroom_active_seconds": "counter",
    "stateroom_rows_read": "counter",
    "stateroom_rows_written": "counter",
    "stateroom_stored_bytes": "gauge",
}


def samples(text):
    """name -> {frozenset(labels.items()): value}, and family name -> type."""
    out, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out, types


@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_metrics_parse_and_carry_meters_per_class_and_process_figures(stateroom_runtime):
    rt = stateroom_runtime
    stub = rt.namespace("METER").get_by_name("scraped")
    for _ in range(4):
        await stub.hit()
    await stub.write(2)
    async with httpx.AsyncClient(base_url=rt.url) as http:
        r = await http.get("/_stateroom/metrics", headers={"authorization": f"Bearer {rt.token}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values, types = samples(r.text)
    for name, kind in CLASS_FAMILIES.items():
        assert types.get(name) == kind, (name, types.get(name))
    meter = frozenset({("class", "Meter")})
    assert values["stateroom_requests_total"][meter] == 5
    assert values["stateroom_cpu_ms_total"][meter] > 0
    assert values["stateroom_active_seconds_total"][meter] > 0
    assert values["stateroom_stored_bytes"][meter] > 0
    procs = await rt.processes()
    cpu = values["stateroom_process_cpu_seconds_total"]
    rss = values["stateroom_process_rss_bytes"]
    assert types["stateroom_process_cpu_seconds"] == "counter"
    assert types["stateroom_process_rss_bytes"] == "gauge"
    for p in procs:
        key = frozenset({("role", p["role"]), ("pid", str(p["pid"]))})
        assert key in cpu and key in rss, (key, list(cpu))
        assert rss[key] > 1_000_000


@pytest.mark.stateroom(workers=1)
async def test_metrics_need_the_token_by_default(stateroom_runtime):
    async with httpx.AsyncClient(base_url=stateroom_runtime.url) as http:
        assert (await http.get("/_stateroom/metrics")).status_code == 401
        bad = await http.get("/_stateroom/metrics", headers={"authorization": "Bearer wrong"})
        assert bad.status_code == 401


@pytest.mark.stateroom(workers=1, metrics_public=True)
async def test_metrics_public_serves_metrics_without_the_token_and_nothing_else(stateroom_runtime):
    async with httpx.AsyncClient(base_url=stateroom_runtime.url) as http:
        r = await http.get("/_stateroom/metrics")
        assert r.status_code == 200
        _, types = samples(r.text)
        assert "stateroom_process_rss_bytes" in types
        assert (await http.get("/_stateroom/v1/processes")).status_code == 401
        assert (await http.get("/_stateroom/v1/billing")).status_code == 401
