"""Typed keys of the objects an application instance keeps."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from omr_desktop.pipeline.task_manager import TaskManager


@dataclass(frozen=True)
class ServerOptions:
    """Settings of one application instance.

    Attributes:
        token: the bearer token every request must carry, or ``None``.
        cors_origins: origins allowed to call from a browser page; empty
            turns CORS off.
        heartbeat_s: seconds of silence after which a stream sends a comment.
        poll_interval_s: how often a stream reads the database for a task
            that another process runs.
        retry_ms: the reconnect delay a stream suggests to the browser.
    """

    token: str | None
    cors_origins: frozenset[str]
    heartbeat_s: float
    poll_interval_s: float
    retry_ms: int


MANAGER = web.AppKey("manager", TaskManager)
OPTIONS = web.AppKey("options", ServerOptions)
DB_EXECUTOR = web.AppKey("db_executor", ThreadPoolExecutor)
