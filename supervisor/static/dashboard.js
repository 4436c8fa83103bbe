// Stateroom dashboard: polls the admin API (cookie auth) and draws uPlot charts.
// State lives in `window.__dashboard` so tests (and curious people) can inspect it.
"use strict";

(function () {
  const KEEP = 300;            // samples kept per series (5 minutes at 1/s)
  const POLL_MS = 1000;        // processes + usage
  const BUSIEST_MS = 5000;     // billing by object
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                  "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  const state = {
    samples: 0,          // successful polls
    xs: [],              // sample times (unix seconds)
    keys: [],            // process keys: "supervisor", "worker 0", ...
    cpu: {},             // key -> [cpu %]
    rss: {},             // key -> [MiB]
    rps: [], wsps: [],   // requests/s, ws messages/s
    cost: [],            // USD per minute
    prev: null,          // previous usage sample
    charts: {},          // name -> uPlot
    errors: [],
  };
  window.__dashboard = state;

  const $ = (id) => document.getElementById(id);

  // The token came in the address once; the cookie carries it from now on.
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);
  }

  function keyOf(p) {
    return p.role === "supervisor" ? "supervisor" : "worker " + (p.index ?? p.pid);
  }

  function makeChart(name, el, labels, fmt) {
    if (state.charts[name]) { state.charts[name].destroy(); }
    const series = [{}].concat(labels.map((label, i) => ({
      label, stroke: COLORS[i % COLORS.length], width: 1.5,
      value: (u, v) => v == null ? "-" : fmt(v),
    })));
    const opts = {
      width: Math.max(320, el.clientWidth - 4), height: 220,
      series, scales: { x: { time: true } },
      axes: [{}, { size: 70, values: (u, vals) => vals.map(fmt) }],
      legend: { live: true },
    };
    const data = [[]].concat(labels.map(() => []));
    state.charts[name] = new uPlot(opts, data, el);
  }

  function fmtUsd(v) {
    if (v === 0) return "0";
    return Math.abs(v) < 0.01 ? v.toExponential(1) : v.toFixed(3);
  }

  function buildCharts() {
    const k = state.keys;
    makeChart("cpu", $("chart-cpu"), k, (v) => v.toFixed(1));
    makeChart("rss", $("chart-rss"), k, (v) => v.toFixed(0));
    makeChart("rps", $("chart-rps"), ["requests/s", "ws messages/s"], (v) => v.toFixed(1));
    makeChart("cost", $("chart-cost"), ["USD/min"], fmtUsd);
  }

  function push(arr, v) { arr.push(v); if (arr.length > KEEP) arr.shift(); }

  async function getJSON(path) {
    const r = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (r.status === 401) {
      throw new Error("not authorized: open /_stateroom/dashboard?token=<token> once");
    }
    if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
    return r.json();
  }

  function fmtUptime(s) {
    if (s < 120) return s.toFixed(0) + "s";
    if (s < 7200) return (s / 60).toFixed(0) + "m";
    return (s / 3600).toFixed(1) + "h";
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function renderProcesses(procs) {
    const body = $("processes");
    body.replaceChildren(...procs.map((p) => {
      const tr = document.createElement("tr");
      tr.append(cell(keyOf(p)), cell(String(p.pid ?? "-")), cell(p.cpu_percent.toFixed(1)),
        cell(p.cpu_seconds.toFixed(2)), cell((p.rss_bytes / 1048576).toFixed(1)),
        cell(String(p.objects_active)), cell(String(p.sockets_parked)),
        cell(String(p.restarts)), cell(fmtUptime(p.uptime_s)));
      return tr;
    }));
  }

  async function poll() {
    const [pdoc, usage] = await Promise.all([
      getJSON("/_stateroom/v1/processes"), getJSON("/_stateroom/v1/usage")]);
    const procs = pdoc.processes;
    const keys = procs.map(keyOf);
    if (keys.join("|") !== state.keys.join("|")) {
      state.keys = keys;
      state.xs = []; state.cpu = {}; state.rss = {};
      state.rps = []; state.wsps = []; state.cost = [];
      for (const k of keys) { state.cpu[k] = []; state.rss[k] = []; }
      buildCharts();
    }
    const t = usage.time;
    const now = usage.totals;
    let rps = 0, wsps = 0, cost = 0;
    if (state.prev) {
      const dt = Math.max(1e-3, t - state.prev.time);
      const was = state.prev.totals;
      rps = Math.max(0, (now.requests - was.requests) / dt);
      wsps = Math.max(0, (now.ws_messages_in - was.ws_messages_in) / dt);
      cost = Math.max(0, (now.cost_usd - was.cost_usd) / dt * 60);
    }
    state.prev = usage;
    push(state.xs, t);
    procs.forEach((p, i) => {
      push(state.cpu[keys[i]], p.cpu_percent);
      push(state.rss[keys[i]], p.rss_bytes / 1048576);
    });
    push(state.rps, rps); push(state.wsps, wsps); push(state.cost, cost);
    state.charts.cpu.setData([state.xs].concat(keys.map((k) => state.cpu[k])));
    state.charts.rss.setData([state.xs].concat(keys.map((k) => state.rss[k])));
    state.charts.rps.setData([state.xs, state.rps, state.wsps]);
    state.charts.cost.setData([state.xs, state.cost]);
    renderProcesses(procs);
    state.samples += 1;
    $("status").textContent = `${procs.length - 1} workers · ${now.requests} requests · `
      + `$${now.cost_usd.toPrecision(3)} so far · updated ${new Date(t * 1000).toLocaleTimeString()}`;
  }

  async function pollBusiest() {
    const doc = await getJSON("/_stateroom/v1/billing?group_by=object&since=5m");
    const top = doc.groups.slice().sort((a, b) => b.cpu_ms - a.cpu_ms || b.requests - a.requests)
      .slice(0, 10);
    $("busiest").replaceChildren(...top.map((g) => {
      const tr = document.createElement("tr");
      const name = g.name ?? (g.object ? g.object.slice(0, 12) + "…" : "-");
      tr.append(cell(name), cell(g.class, "l"), cell(g.cpu_ms.toFixed(1)),
        cell(String(g.requests)), cell(String(g.ws_messages_in)), cell(fmtUsd(g.cost_usd)));
      return tr;
    }));
    state.busiest = top.length;
  }

  function loop(fn, every) {
    const run = async () => {
      try {
        await fn();
        $("error").textContent = "";
      } catch (err) {
        state.errors.push(String(err));
        $("error").textContent = String(err.message || err);
      }
      setTimeout(run, every);
    };
    run();
  }

  window.addEventListener("resize", () => {
    for (const name in state.charts) {
      const u = state.charts[name];
      u.setSize({ width: Math.max(320, u.root.parentElement.clientWidth - 4), height: 220 });
    }
  });

  loop(poll, POLL_MS);
  loop(pollBusiest, BUSIEST_MS);
})();
