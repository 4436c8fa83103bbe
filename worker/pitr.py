"""Point-in-time recovery (placeholder until the storage work lands)."""

from __future__ import annotations

from typing import Any


class Pitr:
    def __init__(self, worker: Any) -> None:
        self.worker = worker

    def before_open(self, host: Any) -> None:
        pass

    def current_bookmark(self, host: Any) -> str:
        raise NotImplementedError("point-in-time recovery is not available yet")

    def bookmark_for_time(self, host: Any, when: Any) -> str:
        raise NotImplementedError("point-in-time recovery is not available yet")

    def restore_on_next_session(self, host: Any, bookmark: str) -> str:
        raise NotImplementedError("point-in-time recovery is not available yet")
