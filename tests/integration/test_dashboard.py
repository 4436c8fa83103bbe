"""The dashboard (SPEC §12): token once then a cookie, and live charts in Chromium."""

from pathlib import Path

import httpx
import pytest
import trio

from tests.cdp import open_page
from tests.conftest import APPS

METERS_APP = str(APPS / "meters" / "stateroom.toml")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

CHART_STATE = """(() => {
  const d = window.__dashboard;
  if (!d || !d.charts.cpu) return null;
  const charts = {};
  for (const [name, u] of Object.entries(d.charts)) {
    const c = u.ctx.canvas;
    const px = u.ctx.getImageData(0, 0, c.width, c.height).data;
    let painted = 0;
    for (let i = 3; i < px.length; i += 4) if (px[i] > 0) painted++;
    charts[name] = {width: c.width, height: c.height, painted, points: u.data[0].length,
                    series: u.series.length - 1};
  }
  return {samples: d.samples, busiest: d.busiest || 0, errors: d.errors, charts,
          maxRps: Math.max(0, ...d.rps), href: location.href, cookie: document.cookie,
          processes: document.querySelectorAll('#processes tr').length};
})()"""


@pytest.mark.stateroom(workers=1)
async def test_dashboard_takes_the_token_once_then_a_strict_http_only_cookie(stateroom_runtime):
    rt = stateroom_runtime
    async with httpx.AsyncClient(base_url=rt.url) as http:
        assert (await http.get("/_stateroom/dashboard")).status_code == 401
        assert (
            await http.get("/_stateroom/dashboard", params={"token": "wrong"})
        ).status_code == 401
        # ?token= opens only the dashboard, not the API.
        assert (
            await http.get("/_stateroom/v1/processes", params={"token": rt.token})
        ).status_code == 401
        r = await http.get("/_stateroom/dashboard", params={"token": rt.token})
        assert r.status_code == 200 and "text/html" in r.headers["content-type"]
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"stateroom_token={rt.token};")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
    # A fresh client that sends only the cookie.
    jar = {"cookie": f"stateroom_token={rt.token}"}
    async with httpx.AsyncClient(base_url=rt.url) as http:
        page = await http.get("/_stateroom/dashboard", headers=jar)
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "uplot.iife.min.js" in page.text
        for asset in ("uplot.iife.min.js", "uplot.min.css", "dashboard.js"):
            a = await http.get(f"/_stateroom/dashboard/{asset}", headers=jar)
            assert a.status_code == 200 and len(a.content) > 1000, asset
        assert (await http.get("/_stateroom/dashboard/app.py", headers=jar)).status_code == 404
        assert (await http.get("/_stateroom/v1/usage", headers=jar)).status_code == 200


@pytest.mark.browser
@pytest.mark.stateroom(config=METERS_APP, workers=2)
async def test_dashboard_draws_live_charts_in_chromium(stateroom_runtime, tmp_path):
    rt = stateroom_runtime
    ns = rt.namespace("METER")

    async def load():
        for i in range(3000):  # bounded: ~60 s at most, cancelled when the test is done
            await ns.get_by_name(f"dash-{i % 5}").hit()
            if i % 25 == 0:
                await ns.get_by_name("dash-hot").burn(0.02)
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(load)
        async with open_page(tmp_path) as page:
            await page.navigate(f"{rt.url}/_stateroom/dashboard?token={rt.token}")
            state = None
            with trio.fail_after(60):
                while True:
                    state = await page.evaluate(CHART_STATE)
                    if (
                        state
                        and state["samples"] >= 4
                        and state["busiest"] > 0
                        and state["maxRps"] > 0
                        and all(c["points"] >= 4 for c in state["charts"].values())
                    ):
                        break
                    await trio.sleep(0.25)
            await page.screenshot(ARTIFACTS / "dashboard.png")
            assert page.errors == [], page.errors
            assert state["errors"] == [], state["errors"]
        nursery.cancel_scope.cancel()
    assert state["href"] == f"{rt.url}/_stateroom/dashboard", "the token should leave the URL"
    assert "stateroom_token" not in state["cookie"], "the cookie must be HttpOnly"
    assert state["processes"] == 3
    charts = state["charts"]
    assert set(charts) == {"cpu", "rss", "rps", "cost"}
    assert charts["cpu"]["series"] == charts["rss"]["series"] == 3
    for name, c in charts.items():
        assert c["width"] >= 300 and c["height"] >= 150, (name, c)
        # Non-empty: axes, grid and at least one drawn series line.
        assert c["painted"] > 2000, (name, c)
