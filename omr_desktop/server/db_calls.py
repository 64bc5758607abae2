"""The database work of requests, run on the application's own thread pool.

Under the GUI the event loop's thread also paints the window, so nothing
here runs on it: handlers ``await run_blocking(...)``, which hands the call
to the pool the application created at start-up.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.db.profiles import list_profiles
from omr_desktop.db.task_store import StoredEvent, TaskRow
from omr_desktop.server.keys import DB_EXECUTOR

T = TypeVar("T")


async def run_blocking(app: web.Application, func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` on the application's database pool and await it."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(app[DB_EXECUTOR], functools.partial(func, *args))


@dataclass(frozen=True)
class TaskSnapshot:
    """A task's row and the stored events after a given id.

    Attributes:
        task: the row, or ``None`` when no such task exists.
        events: the stored events after the requested id, in id order.
        last_event: the task's last stored event, whatever its id; the
            stream sends it again to a client that has seen it already.
    """

    task: TaskRow | None
    events: list[StoredEvent]
    last_event: StoredEvent | None


def read_task(database: Database, task_id: str, after_id: int) -> TaskSnapshot:
    """Read a task's row and its events after ``after_id``."""
    with database.connect(autocommit=True) as conn:
        task = task_store.get_task(conn, task_id)
        if task is None:
            return TaskSnapshot(None, [], None)
        events = task_store.events_after(conn, task_id, after_id)
        if events:
            return TaskSnapshot(task, events, events[-1])
        last_id = task_store.last_event_id(conn, task_id)
        tail = task_store.events_after(conn, task_id, last_id - 1) if last_id else []
        return TaskSnapshot(task, [], tail[-1] if tail else None)


def read_task_row(database: Database, task_id: str) -> TaskRow | None:
    """Read one task's row."""
    with database.connect(autocommit=True) as conn:
        return task_store.get_task(conn, task_id)


def read_profiles(database: Database) -> list[dict[str, Any]]:
    """List the profiles for a picker: id, name, description, builtin."""
    with database.connect(autocommit=True) as conn:
        return [
            {
                "id": p.id,
                "name": p.name,
                "description": p.description,
                "builtin": p.builtin,
            }
            for p in list_profiles(conn)
        ]


def check_database(database: Database) -> None:
    """Run a trivial query; raises what connecting or querying raises."""
    with database.connect(autocommit=True) as conn:
        conn.execute("SELECT 1").fetchone()
