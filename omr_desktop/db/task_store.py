"""Reprocess task rows and their stored progress events."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

logger = logging.getLogger(__name__)

PENDING = "PENDING"
STARTED = "STARTED"
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
STATUSES = (PENDING, STARTED, SUCCESS, FAILURE)

# The runner_host of tasks that cluster workers run. It is no host name, so
# mark_interrupted never fails them: the process that queued a cluster task
# may exit while the workers finish it.
CLUSTER_RUNNER = "(cluster)"


@dataclass(frozen=True)
class TaskRow:
    """A stored reprocess task."""

    task_id: str
    status: str
    profile_id: int
    sheet_ids: list[int]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: dict[str, Any]
    error: str | None
    options: dict[str, Any]
    runner_host: str | None = None

    @property
    def on_cluster(self) -> bool:
        """True for a task that cluster workers run."""
        return self.runner_host == CLUSTER_RUNNER


@dataclass(frozen=True)
class StoredEvent:
    """One stored event: its id in the task's stream, name and JSON data."""

    event_id: int
    event: str
    data: dict[str, Any]


def runner_identity() -> tuple[str, int]:
    """Return (host name, process id) recorded on the tasks this process runs."""
    return socket.gethostname(), os.getpid()


def create_task(
    conn: psycopg.Connection,
    task_id: str,
    profile_id: int,
    sheet_ids: list[int],
    options: dict[str, Any],
    runner: tuple[str, int | None] | None = None,
    *,
    if_missing: bool = False,
) -> bool:
    """Insert a PENDING task row; return False if ``if_missing`` found one.

    Args:
        runner: the (host, pid) recorded as the task's runner; this
            process's by default. ``mark_interrupted`` fails only tasks of
            dead processes on this host.
        if_missing: leave an existing row of ``task_id`` as it is.
    """
    host, pid = runner or runner_identity()
    conflict = " ON CONFLICT (task_id) DO NOTHING" if if_missing else ""
    cursor = conn.execute(
        "INSERT INTO reprocess_tasks (task_id, status, profile_id, sheet_ids,"
        " runner_host, runner_pid, options) VALUES (%s, 'PENDING', %s, %s, %s, %s, %s)"
        + conflict,
        (task_id, profile_id, sheet_ids, host, pid, Jsonb(options)),
    )
    return cursor.rowcount == 1


def mark_started(conn: psycopg.Connection, task_id: str) -> None:
    conn.execute(
        "UPDATE reprocess_tasks SET status = 'STARTED', started_at = now()"
        " WHERE task_id = %s",
        (task_id,),
    )


def mark_succeeded(
    conn: psycopg.Connection, task_id: str, result: dict[str, Any]
) -> bool:
    """Mark a PENDING or STARTED task SUCCESS; return False if it had ended.

    On the cluster another worker may fail the task (a cancel, a chunk that
    gave up) while the final step writes, so a FAILURE row is kept.
    """
    cursor = conn.execute(
        "UPDATE reprocess_tasks SET status = 'SUCCESS', finished_at = now(),"
        " result = %s, error = NULL"
        " WHERE task_id = %s AND status IN ('PENDING', 'STARTED')",
        (Jsonb(result), task_id),
    )
    return cursor.rowcount == 1


def mark_failed(
    conn: psycopg.Connection, task_id: str, reason: str, result: dict[str, Any]
) -> None:
    conn.execute(
        "UPDATE reprocess_tasks SET status = 'FAILURE', finished_at = now(),"
        " result = %s, error = %s WHERE task_id = %s",
        (Jsonb(result), reason, task_id),
    )


def fail_if_unfinished(
    conn: psycopg.Connection, task_id: str, reason: str, result: dict[str, Any]
) -> bool:
    """Mark a PENDING or STARTED task FAILURE; return False if it had ended.

    Several cluster workers may see one task fail; only the first one to
    mark it publishes the error event.
    """
    cursor = conn.execute(
        "UPDATE reprocess_tasks SET status = 'FAILURE', finished_at = now(),"
        " result = %s, error = %s"
        " WHERE task_id = %s AND status IN ('PENDING', 'STARTED')",
        (Jsonb(result), reason, task_id),
    )
    return cursor.rowcount == 1


def get_task(conn: psycopg.Connection, task_id: str) -> TaskRow | None:
    row = conn.execute(
        "SELECT task_id::text, status, profile_id, sheet_ids, created_at, started_at,"
        " finished_at, result, error, options, runner_host FROM reprocess_tasks"
        " WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    return None if row is None else TaskRow(*row)


def recent_tasks(conn: psycopg.Connection, limit: int = 50) -> list[TaskRow]:
    rows = conn.execute(
        "SELECT task_id::text, status, profile_id, sheet_ids, created_at, started_at,"
        " finished_at, result, error, options, runner_host FROM reprocess_tasks"
        " ORDER BY created_at DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [TaskRow(*row) for row in rows]


def mark_interrupted(conn: psycopg.Connection, task_id: str | None = None) -> list[str]:
    """Fail the tasks left PENDING or STARTED by dead processes on this host.

    A task of a process that still runs (another app instance) is left
    alone, and so are tasks of other hosts, whose processes cannot be
    checked from here. With ``task_id``, only that task is checked: the
    server does so for a task it follows, so that a stream does not wait
    forever for a command line run that was killed.

    Returns:
        The ids of the tasks marked FAILURE with the reason "interrupted".
    """
    host, _pid = runner_identity()
    query = (
        "SELECT task_id::text, runner_pid, created_at FROM reprocess_tasks"
        " WHERE status IN ('PENDING', 'STARTED') AND runner_host = %s"
    )
    params: tuple[Any, ...] = (host,)
    if task_id is not None:
        query += " AND task_id = %s"
        params = (host, task_id)
    rows = conn.execute(query, params).fetchall()
    dead = [found for found, pid, created in rows if not _runner_alive(pid, created)]
    marked = []
    for found in dead:
        with conn.transaction():
            updated = conn.execute(
                "UPDATE reprocess_tasks SET status = 'FAILURE', error = 'interrupted',"
                " finished_at = now() WHERE task_id = %s"
                " AND status IN ('PENDING', 'STARTED')",
                (found,),
            ).rowcount
            # Another process may have marked it in between.
            if updated:
                _append_interrupted_event(conn, found)
                marked.append(found)
    for found in marked:
        logger.warning(
            "Task %s was left unfinished by a process that died; marked "
            "FAILURE (interrupted)",
            found,
        )
    return marked


def _append_interrupted_event(conn: psycopg.Connection, task_id: str) -> None:
    """End the task's stored log with an error event, as a failing task's ends.

    Like that event, it carries the counts, elapsed time and overall
    percentage of the last event stored, so a client sees how far the task
    got.
    """
    row = conn.execute(
        "SELECT coalesce(array_length(sheet_ids, 1), 0) FROM reprocess_tasks"
        " WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    stored = conn.execute(
        "SELECT event_id, data FROM task_events WHERE task_id = %s"
        " ORDER BY event_id DESC LIMIT 1",
        (task_id,),
    ).fetchone()
    event_id = int(stored[0]) + 1 if stored else 1
    last: dict[str, Any] = stored[1] if stored else {}
    data = {
        "task_id": task_id,
        "event": "error",
        "stage": "Failed",
        "message": "Reprocess failed: interrupted",
        "progress_percentage": 0.0,
        "overall_percentage": float(last.get("overall_percentage", 0.0)),
        "processed": int(last.get("processed", 0)),
        "total": int(row[0]) if row else 0,
        "failed": int(last.get("failed", 0)),
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "elapsed_s": float(last.get("elapsed_s", 0.0)),
        "status": FAILURE,
        "result": {"reason": "interrupted"},
        "event_id": event_id,
    }
    append_event(conn, task_id, event_id, "error", data)


# When this process started running tasks, near enough: a task of this pid
# created earlier belongs to an older process that had the same pid.
_PROCESS_STARTED = datetime.now(UTC)


def _runner_alive(pid: int | None, created_at: datetime) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return created_at >= _PROCESS_STARTED
    return _process_alive(pid)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def append_event(
    conn: psycopg.Connection,
    task_id: str,
    event_id: int,
    event: str,
    data: dict[str, Any],
) -> None:
    conn.execute(
        "INSERT INTO task_events (task_id, event_id, event, data)"
        " VALUES (%s, %s, %s, %s)",
        (task_id, event_id, event, Jsonb(data)),
    )


def events_after(
    conn: psycopg.Connection, task_id: str, last_event_id: int = 0
) -> list[StoredEvent]:
    rows = conn.execute(
        "SELECT event_id, event, data FROM task_events"
        " WHERE task_id = %s AND event_id > %s ORDER BY event_id",
        (task_id, last_event_id),
    ).fetchall()
    return [StoredEvent(int(r[0]), str(r[1]), r[2]) for r in rows]


def last_event_id(conn: psycopg.Connection, task_id: str) -> int:
    row = conn.execute(
        "SELECT coalesce(max(event_id), 0) FROM task_events WHERE task_id = %s",
        (task_id,),
    ).fetchone()
    return int(row[0]) if row else 0


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(data, default=str)
