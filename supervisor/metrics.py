"""Prometheus exposition of the meters and the process figures (`/_stateroom/metrics`).

Built with prometheus-client: a custom collector turns one snapshot (meters per
class from `meters.Meters.by_class`, processes from `Supervisor.processes`) into
metric families, and `generate_latest` renders the text format. Names (SPEC §12):

  stateroom_requests_total{class}            counter   fetch + RPC + alarm
  stateroom_ws_messages_in_total{class}      counter
  stateroom_cpu_ms_total{class}              counter   thread CPU ms of events
  stateroom_active_seconds_total{class}      counter   wall time in memory
  stateroom_rows_read_total{class}           counter
  stateroom_rows_written_total{class}        counter
  stateroom_stored_bytes{class}              gauge     bytes on disk now
  stateroom_process_cpu_seconds_total{role,pid}  counter
  stateroom_process_rss_bytes{role,pid}      gauge
  stateroom_process_cpu_percent{role,pid}    gauge     last sampling window
  stateroom_objects_active{role,pid}         gauge
  stateroom_sockets_parked{role,pid}         gauge

Class counters count since the runtime's data began (they survive restarts, as
the meters are persisted), so they only go up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["render_metrics"]

_CLASS_COUNTERS = [
    ("stateroom_requests", "requests", "Requests to objects (fetch + RPC + alarm)."),
    ("stateroom_ws_messages_in", "ws_messages_in", "WebSocket messages received by objects."),
    ("stateroom_cpu_ms", "cpu_ms", "Thread CPU milliseconds spent in object events."),
    ("stateroom_active_seconds", "active_s", "Seconds objects spent in memory, not hibernated."),
    ("stateroom_rows_read", "rows_read", "SQLite rows read by objects."),
    ("stateroom_rows_written", "rows_written", "SQLite rows written by objects."),
]


class _Snapshot:
    """A collector over one snapshot of figures (registered in a fresh registry)."""

    def __init__(self, by_class: dict[str, dict[str, float]], processes: list[dict[str, Any]]):
        self.by_class = by_class
        self.processes = processes

    def collect(self) -> Iterator[Metric]:
        for name, key, doc in _CLASS_COUNTERS:
            fam = CounterMetricFamily(name, doc, labels=["class"])
            for cls, figures in sorted(self.by_class.items()):
                fam.add_metric([cls], float(figures.get(key, 0)))
            yield fam
        stored = GaugeMetricFamily(
            "stateroom_stored_bytes", "Bytes objects store on disk.", labels=["class"]
        )
        for cls, figures in sorted(self.by_class.items()):
            stored.add_metric([cls], float(figures.get("stored_bytes", 0)))
        yield stored
        procs = [p for p in self.processes if p.get("pid") is not None]
        cpu = CounterMetricFamily(
            "stateroom_process_cpu_seconds",
            "CPU seconds (user + system) of the process.",
            labels=["role", "pid"],
        )
        rss = GaugeMetricFamily(
            "stateroom_process_rss_bytes", "Resident memory of the process.", labels=["role", "pid"]
        )
        pct = GaugeMetricFamily(
            "stateroom_process_cpu_percent",
            "CPU % over the last sampling window.",
            labels=["role", "pid"],
        )
        objects = GaugeMetricFamily(
            "stateroom_objects_active", "Objects in memory in the process.", labels=["role", "pid"]
        )
        sockets = GaugeMetricFamily(
            "stateroom_sockets_parked", "WebSockets parked for the process.", labels=["role", "pid"]
        )
        for p in procs:
            labels = [str(p["role"]), str(p["pid"])]
            cpu.add_metric(labels, float(p["cpu_seconds"]))
            rss.add_metric(labels, float(p["rss_bytes"]))
            pct.add_metric(labels, float(p["cpu_percent"]))
            objects.add_metric(labels, float(p["objects_active"]))
            sockets.add_metric(labels, float(p["sockets_parked"]))
        yield from (cpu, rss, pct, objects, sockets)


def render_metrics(
    by_class: dict[str, dict[str, float]], processes: list[dict[str, Any]]
) -> tuple[bytes, str]:
    """The Prometheus text document and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(by_class, processes))  # type: ignore[arg-type]
    return generate_latest(registry), CONTENT_TYPE_LATEST
