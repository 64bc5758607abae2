"""The HTTP stream's reader of cluster events: redis-py's asyncio client.

Implements ``server.cluster_stream.ClusterEventSource`` over the keys that
``redis_events`` writes, on the server's event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from omr_desktop.cluster.redis_events import channel, key, parse_frame


class RedisSubscription:
    """The live events of one task's channel."""

    def __init__(self, pubsub: Any) -> None:
        self._pubsub = pubsub

    async def get(self, timeout_s: float) -> dict[str, Any] | None:
        message = await self._pubsub.get_message(
            ignore_subscribe_messages=True, timeout=timeout_s
        )
        if message is None or message.get("type") != "message":
            return None
        return parse_frame(message["data"])


class RedisEventSource:
    """Read cluster tasks' events from the Redis at ``url``."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s)

    async def history(self, task_id: str, after_id: int) -> list[dict[str, Any]]:
        # Event n is at index n - 1 of the list.
        frames = await self._client.lrange(key(task_id, "log"), max(after_id, 0), -1)
        return [parse_frame(f) for f in frames]

    async def last(self, task_id: str) -> dict[str, Any] | None:
        frame = await self._client.lindex(key(task_id, "log"), -1)
        return None if frame is None else parse_frame(frame)

    @contextlib.asynccontextmanager
    async def subscribe(self, task_id: str) -> AsyncIterator[RedisSubscription]:
        pubsub = self._client.pubsub()
        await pubsub.subscribe(channel(task_id))
        try:
            yield RedisSubscription(pubsub)
        finally:
            await pubsub.unsubscribe()
            await pubsub.aclose()

    async def close(self) -> None:
        await self._client.aclose()
