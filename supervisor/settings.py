"""Serve flags (SPEC §11): each flag also reads `STATEROOM_<NAME>` from the environment."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class Settings:
    data: Path = Path(".stateroom")
    host: str = "127.0.0.1"
    port: int = 8787
    workers: int = 0  # 0: CPU count
    token: str | None = None
    hibernate_after: float = 10.0
    evict_after: float = 60.0
    durability: str = "full"
    cpu_limit: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_ws_message_bytes: int = 32 * 1024 * 1024
    max_queued_events: int = 1000
    max_db_bytes: int = 10 * 1024**3
    pitr_retention: float = 7 * 86400.0
    worker_memory_limit: int | None = None
    shutdown_grace: float = 10.0
    # Seconds a redeploy lets in-flight events finish on the old code before a reset.
    deploy_grace: float = 30.0
    prices: Path | None = None
    fault_injection: bool = False
    metrics_public: bool = False
    debug: bool = False
    shards: int = 256
    # Test-only knob: base of the alarm retry backoff in seconds (SPEC: 2 s).
    alarm_retry_base: float = 2.0

    def worker_settings(self) -> dict[str, Any]:
        """The subset of settings every worker needs (sent in `Welcome`)."""
        return {
            "data_dir": str(self.data.resolve()),
            "hibernate_after": self.hibernate_after,
            "evict_after": self.evict_after,
            "durability": self.durability,
            "cpu_limit": self.cpu_limit,
            "max_ws_message_bytes": self.max_ws_message_bytes,
            "max_queued_events": self.max_queued_events,
            "max_db_bytes": self.max_db_bytes,
            "pitr_retention": self.pitr_retention,
            "debug": self.debug,
            "fault_injection": self.fault_injection,
            "deploy_grace": self.deploy_grace,
        }


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _seconds(s: str) -> float:
    v = float(s)
    if v < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return v


def _bool_env(s: str) -> bool:
    return s.strip().lower() in ("1", "true", "yes", "on")


_FLAGS: list[tuple[str, Any, str]] = [
    ("data", Path, "data folder (runtime database, object files)"),
    ("host", str, "address to listen on"),
    ("port", int, "port (0 picks a free one)"),
    ("workers", _positive_int, "worker processes (default: CPU count)"),
    ("token", str, "admin token (default: DATA/token, created at first start)"),
    ("hibernate_after", _seconds, "seconds before an object with only sockets hibernates"),
    ("evict_after", _seconds, "seconds before an idle object is evicted"),
    ("durability", str, "full (fsync at commit) or process"),
    ("cpu_limit", _seconds, "CPU seconds per event (max 300)"),
    ("max_body_bytes", _positive_int, "largest request body"),
    ("max_ws_message_bytes", _positive_int, "largest WebSocket message"),
    ("max_queued_events", _positive_int, "queued events per object before overload"),
    ("max_db_bytes", _positive_int, "largest object database"),
    ("pitr_retention", _seconds, "point-in-time recovery window in seconds"),
    ("worker_memory_limit", _positive_int, "RSS bytes after which a worker restarts"),
    ("shutdown_grace", _seconds, "seconds in-flight events get at shutdown"),
    (
        "deploy_grace",
        _seconds,
        "seconds in-flight events get to finish on the old code at a redeploy",
    ),
    ("prices", Path, "TOML price table for billing"),
]
_SWITCHES = [
    ("fault_injection", "enable the fault-injection route"),
    ("metrics_public", "serve /_stateroom/metrics without the token"),
    ("debug", "tracebacks in 500 responses"),
]


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    for name, typ, help_ in _FLAGS:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, type=typ, default=None, help=help_
        )
    for name, help_ in _SWITCHES:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, action="store_true", default=None, help=help_
        )


def settings_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    env = os.environ if environ is None else environ
    s = Settings()
    for name, typ, _ in _FLAGS:
        value = getattr(args, name, None)
        if value is None:
            raw = env.get("STATEROOM_" + name.upper())
            if raw not in (None, ""):
                try:
                    value = typ(raw)
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    raise SystemExit(f"error: STATEROOM_{name.upper()}={raw!r}: {exc}") from None
        if value is not None:
            setattr(s, name, value)
    for name, _ in _SWITCHES:
        value = getattr(args, name, None)
        if value is None:
            raw = env.get("STATEROOM_" + name.upper())
            value = _bool_env(raw) if raw else None
        if value is not None:
            setattr(s, name, value)
    raw = env.get("STATEROOM_ALARM_RETRY_BASE")
    if raw:
        s.alarm_retry_base = float(raw)
    if s.durability not in ("full", "process"):
        raise SystemExit(f"error: --durability must be 'full' or 'process', not {s.durability!r}")
    if s.cpu_limit <= 0 or s.cpu_limit > 300:
        raise SystemExit("error: --cpu-limit must be between 0 and 300 seconds")
    if s.workers == 0:
        s.workers = os.cpu_count() or 1
    if not (0 <= s.port <= 65535):
        raise SystemExit("error: --port must be between 0 and 65535")
    return s
