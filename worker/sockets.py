"""WebSocket handles on the worker side (the connections live in the supervisor).

Filled in by the WebSockets work; this registry keeps the per-object bookkeeping
the catalog needs (socket counts for hibernation).
"""

from __future__ import annotations

from typing import Any


class SocketRegistry:
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def start(self) -> None:
        pass

    def count(self, host: Any) -> int:
        return 0

    def on_construct(self, host: Any) -> None:
        pass

    def on_message(self, msg: Any) -> None:
        self.worker.log(f"unexpected message {type(msg).__name__}")

    def accept(self, host: Any, ws: Any, tags: Any) -> None:
        raise NotImplementedError("WebSockets are not available yet")

    def get_web_sockets(self, host: Any, tag: Any) -> list[Any]:
        return []

    def get_tags(self, host: Any, ws: Any) -> list[str]:
        return []

    def set_auto_response(self, host: Any, pair: Any) -> None:
        raise NotImplementedError

    def get_auto_response(self, host: Any) -> Any:
        return None

    def get_auto_response_timestamp(self, host: Any, ws: Any) -> Any:
        return None

    def set_event_timeout(self, host: Any, ms: Any) -> None:
        pass

    def get_event_timeout(self, host: Any) -> Any:
        return None
