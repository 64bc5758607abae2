"""The database work of requests, run on the application's own thread pool.

Under the GUI the event loop's thread also paints the window, so nothing
here runs on it: handlers ``await run_blocking(...)``, which hands the call
to the pool the application created. The calls share a few open
connections (``ConnectionCache``) rather than connect per request.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
from aiohttp import web
from psycopg.pq import TransactionStatus

from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.db.migrate import check_not_newer
from omr_desktop.db.profiles import list_profiles
from omr_desktop.db.task_store import StoredEvent, TaskRow
from omr_desktop.server.keys import DB_EXECUTOR

T = TypeVar("T")


class ConnectionCache:
    """Autocommit connections kept open between requests; thread-safe.

    At most ``size`` idle connections are kept, one per thread of the pool
    that uses them, so the server keeps no more connections open than it
    has threads. A connection in use when an exception is raised is closed
    rather than kept, in case the error broke it.
    """

    def __init__(self, database: Database, size: int) -> None:
        self.database = database
        self._size = size
        self._idle: list[psycopg.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """Lend an open connection; it goes back to the cache afterwards."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None or conn.closed:
            conn = self.database.connect(autocommit=True)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)

    def _give_back(self, conn: psycopg.Connection) -> None:
        idle = conn.info.transaction_status == TransactionStatus.IDLE
        with self._lock:
            if idle and not self._closed and len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; lent ones are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


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


def read_task(
    connections: ConnectionCache, task_id: str, after_id: int
) -> TaskSnapshot:
    """Read a task's row and its events after ``after_id``.

    A task left unfinished by a dead process of this host is marked
    FAILURE ("interrupted") first, so that its stream ends.
    """
    with connections.connection() as conn:
        task = _get_task_failing_dead_runner(conn, task_id)
        if task is None:
            return TaskSnapshot(None, [], None)
        events = task_store.events_after(conn, task_id, after_id)
        if events:
            return TaskSnapshot(task, events, events[-1])
        last_id = task_store.last_event_id(conn, task_id)
        tail = task_store.events_after(conn, task_id, last_id - 1) if last_id else []
        return TaskSnapshot(task, [], tail[-1] if tail else None)


def read_task_row(connections: ConnectionCache, task_id: str) -> TaskRow | None:
    """Read one task's row, failing it first if its process died (`read_task`)."""
    with connections.connection() as conn:
        return _get_task_failing_dead_runner(conn, task_id)


def _get_task_failing_dead_runner(
    conn: psycopg.Connection, task_id: str
) -> TaskRow | None:
    task = task_store.get_task(conn, task_id)
    if task is None or task.status not in (task_store.PENDING, task_store.STARTED):
        return task
    if task_store.mark_interrupted(conn, task_id):
        return task_store.get_task(conn, task_id)
    return task


def read_profiles(connections: ConnectionCache) -> list[dict[str, Any]]:
    """List the profiles for a picker: id, name, description, builtin."""
    with connections.connection() as conn:
        return [
            {
                "id": p.id,
                "name": p.name,
                "description": p.description,
                "builtin": p.builtin,
            }
            for p in list_profiles(conn)
        ]


def check_database(connections: ConnectionCache) -> None:
    """Check that the database responds and that no newer version migrated it.

    Raises:
        SchemaTooNewError: a newer OMR Desktop migrated the database.
        psycopg.Error: connecting or querying failed.
    """
    with connections.connection() as conn:
        check_not_newer(conn, hold=False)


CONNECTIONS = web.AppKey("connections", ConnectionCache)
