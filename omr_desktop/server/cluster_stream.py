"""The stream of a task that cluster workers run, read from their Redis.

Used for a task whose row marks it as a cluster task and whose events are
not in this database (another process sent it, such as the web
deployment). The Redis list has every event, numbered as the workers
published them, so a client's ``Last-Event-ID`` picks up where it left off.
``sse.py`` follows such a task with the same steps as a local one:
subscribe first, then send the history after ``Last-Event-ID``, then the
live events, dropping any whose id was sent already; after the terminal
event, close.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from aiohttp import web

from omr_desktop.db.task_store import TaskRow

logger = logging.getLogger(__name__)


class ClusterSubscription(Protocol):
    """Live events of one task."""

    async def get(self, timeout_s: float) -> dict[str, Any] | None:
        """Return the next event's data, or None after ``timeout_s``."""
        ...


class ClusterEventSource(Protocol):
    """A source of cluster tasks' events (Redis, in production)."""

    async def history(self, task_id: str, after_id: int) -> list[dict[str, Any]]:
        """Return the task's events after ``after_id``, in id order."""
        ...

    async def last(self, task_id: str) -> dict[str, Any] | None:
        """Return the task's last event, if any."""
        ...

    def subscribe(
        self, task_id: str
    ) -> AbstractAsyncContextManager[ClusterSubscription]: ...

    async def close(self) -> None: ...


CLUSTER_EVENTS = web.AppKey("cluster_events", ClusterEventSource)


async def has_events(source: ClusterEventSource, task: TaskRow) -> bool:
    """Tell whether the stream of ``task`` should come from the cluster's Redis."""
    if not task.on_cluster:
        return False
    try:
        return await source.last(task.task_id) is not None
    except Exception:  # noqa: BLE001 - Redis down: serve from the database
        logger.exception("Reading task %s's events from Redis failed", task.task_id)
        return False
