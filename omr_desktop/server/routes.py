"""The REST handlers and the route table, served with and without ``/api``.

Routes (each also under the ``/api`` prefix):

- ``POST /sheets/reprocess``: queue a reprocess and return its task id.
- ``GET /sheets/reprocess/{task_id}/stream``: the progress stream (``sse``).
- ``GET /sheets/reprocess/{task_id}/status``: the task's status and result.
- ``GET /profiles``: the profiles, for a picker.
- ``GET /health``: whether the server and its database respond.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from omr_desktop import __version__
from omr_desktop.db import task_store
from omr_desktop.db.migrate import SchemaTooNewError
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import (
    TaskConflictError,
    TaskRequestError,
    UnknownSheetsError,
)
from omr_desktop.server import db_calls, sse
from omr_desktop.server.errors import ApiError, json_error
from omr_desktop.server.keys import MANAGER
from omr_desktop.server.validation import (
    parse_reprocess_body,
    parse_task_id,
    read_json_body,
)

PREFIXES = ("", "/api")

# Unknown sheet ids named in a 404, as in the message.
SHOWN_UNKNOWN_IDS = 20


async def trigger_reprocess(request: web.Request) -> web.Response:
    """Queue a reprocess of the posted sheet ids with the posted profile."""
    selection = parse_reprocess_body(await read_json_body(request))
    manager = request.app[MANAGER]
    reprocess = ReprocessRequest(selection.sheet_ids, selection.profile_id)
    try:
        task_id = await db_calls.run_blocking(request.app, manager.submit, reprocess)
    except TaskConflictError as exc:
        raise ApiError(
            exc.http_status,
            str(exc),
            extra={"task_id": exc.task_id, "sheet_ids": exc.sheet_ids[:20]},
        ) from None
    except UnknownSheetsError as exc:
        raise ApiError(
            exc.http_status,
            str(exc),
            extra={"sheet_ids": exc.missing[:SHOWN_UNKNOWN_IDS]},
        ) from None
    except TaskRequestError as exc:
        raise ApiError(exc.http_status, str(exc)) from None
    return web.json_response(
        {
            "status": "success",
            "message": "Reprocessing triggered successfully",
            "task_id": task_id,
        }
    )


async def task_status(request: web.Request) -> web.Response:
    """Return a task's status and result, also for tasks of earlier runs."""
    task_id = parse_task_id(request.match_info["task_id"])
    task = await db_calls.run_blocking(
        request.app,
        db_calls.read_task_row,
        request.app[db_calls.CONNECTIONS],
        task_id,
    )
    if task is None:
        raise ApiError(404, f"No task {task_id}.")
    result: dict[str, Any] = dict(task.result)
    if task.status == task_store.FAILURE:
        result.setdefault("reason", task.error or "unknown")
    return web.json_response(
        {"task_id": task.task_id, "status": task.status, "result": result}
    )


async def profiles(request: web.Request) -> web.Response:
    """List the profiles: id, name, description and whether it is built in."""
    rows = await db_calls.run_blocking(
        request.app, db_calls.read_profiles, request.app[db_calls.CONNECTIONS]
    )
    return web.json_response({"profiles": rows})


async def health(request: web.Request) -> web.Response:
    """Respond 200 when the database responds, 503 when it does not.

    Also 503 when a newer OMR Desktop migrated the database, because every
    reprocess would then fail.
    """
    manager = request.app[MANAGER]
    try:
        await db_calls.run_blocking(
            request.app, db_calls.check_database, request.app[db_calls.CONNECTIONS]
        )
    except SchemaTooNewError as exc:
        return json_error(
            503,
            str(exc),
            extra={"database": "schema newer", "version": __version__},
        )
    except Exception:  # noqa: BLE001 - any failure means "unreachable"
        return json_error(
            503,
            "The database is unreachable.",
            extra={"database": "unreachable", "version": __version__},
        )
    return web.json_response(
        {
            "status": "ok",
            "database": "ok",
            "version": __version__,
            "active_tasks": len(manager.active_task_ids()),
        }
    )


def add_routes(app: web.Application) -> None:
    """Register every route with and without the ``/api`` prefix."""
    for prefix in PREFIXES:
        name = "api-" if prefix else ""
        router = app.router
        router.add_post(f"{prefix}/sheets/reprocess", trigger_reprocess)
        router.add_get(
            f"{prefix}/sheets/reprocess/{{task_id}}/stream",
            sse.stream_task,
            name=f"{name}stream",
            allow_head=False,
        )
        router.add_get(
            f"{prefix}/sheets/reprocess/{{task_id}}/status",
            task_status,
            allow_head=False,
        )
        router.add_get(f"{prefix}/profiles", profiles, allow_head=False)
        router.add_get(f"{prefix}/health", health, allow_head=False)
