"""The REST and SSE interface against a real task manager and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp import web

from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import MAX_SHEETS_PER_TASK, TaskManager
from omr_desktop.server import db_calls
from omr_desktop.server.app import (
    ServerConfigError,
    check_bind_address,
    create_app,
    is_loopback,
    parse_address,
    start_server,
)
from omr_desktop.server.sse import format_event
from tests.db.builders import dead_pid, mark_migrated_by_newer_version
from tests.server.conftest import (
    TIMEOUT_S,
    WORKERS,
    StreamRead,
    read_stream,
    serving,
)

pytestmark = pytest.mark.db

PREFIXES = ["", "/api"]

# Keys every progress event's data carries.
EVENT_KEYS = {
    "task_id",
    "event",
    "stage",
    "message",
    "progress_percentage",
    "overall_percentage",
    "processed",
    "total",
    "failed",
    "timestamp",
    "elapsed_s",
    "status",
    "event_id",
}

AppFactory = Callable[..., web.Application]


async def post_reprocess(
    client: Any, sheet_ids: list[int], profile_id: int = 2, prefix: str = ""
) -> str:
    response = await client.post(
        f"{prefix}/sheets/reprocess",
        json={"sheet_ids": sheet_ids, "profile_id": profile_id},
    )
    body = await response.json()
    assert response.status == 200, body
    return str(body["task_id"])


async def follow(
    client: Any,
    task_id: str,
    prefix: str = "",
    last_event_id: int | None = None,
    **kwargs: Any,
) -> StreamRead:
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    response = await client.get(
        f"{prefix}/sheets/reprocess/{task_id}/stream", headers=headers, **kwargs
    )
    assert response.status == 200, await response.text()
    return await read_stream(response)


def stage_rank(stage: str) -> int:
    return ev.STAGES.index(stage)


def task_count(conninfo: str) -> int:
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM reprocess_tasks").fetchone()
    assert row is not None
    return int(row[0])


def delete_images(conninfo: str, sheet_ids: list[int]) -> None:
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT image_path FROM sheets WHERE id = ANY(%s)", (sheet_ids,)
        ).fetchall()
    for (path,) in rows:
        os.remove(path)


# -- The stream of a task, start to end ----------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_stream_delivers_stages_then_complete(
    make_app: AppFactory, sheet_ids: list[int], prefix: str
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids, prefix=prefix)
        response = await client.get(f"{prefix}/sheets/reprocess/{task_id}/stream")
        read = await read_stream(response)

    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert read.retry == [3000]
    ids = [e.id for e in read.events]
    assert ids == list(range(1, len(ids) + 1))
    names = [e.event for e in read.events]
    assert names == ["progress"] * (len(names) - 1) + ["complete"]
    ranks = [stage_rank(e.json["stage"]) for e in read.events]
    assert ranks == sorted(ranks)
    assert {e.json["stage"] for e in read.events} == set(ev.STAGES)
    for event in read.events:
        assert event.json.keys() >= EVENT_KEYS
        assert event.json["task_id"] == task_id
        assert event.json["event_id"] == event.id
    final = read.events[-1].json
    assert final["status"] == "SUCCESS"
    assert final["result"]["sheets_processed"] == len(sheet_ids)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_status_reports_success_and_result(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int], prefix: str
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids, prefix=prefix)
        assert await asyncio.to_thread(manager.wait, task_id, TIMEOUT_S)
        response = await client.get(f"{prefix}/sheets/reprocess/{task_id}/status")
        body = await response.json()

    assert response.status == 200
    assert set(body) == {"task_id", "status", "result"}
    assert body["task_id"] == task_id
    assert body["status"] == "SUCCESS"
    result = body["result"]
    assert result["sheets_total"] == len(sheet_ids)
    assert result["sheets_failed"] == 0
    assert result["profile_id"] == 2
    assert "answers_written" in result
    assert "duration_s" in result


async def test_status_is_pending_then_started_while_queued(
    make_app: AppFactory,
    manager: TaskManager,
    detect_pool_gate: threading.Event,
    sheet_ids: list[int],
) -> None:
    async with serving(make_app()) as client:
        first = await post_reprocess(client, sheet_ids[:2])
        second = await post_reprocess(client, sheet_ids[2:])
        await wait_for_status(client, first, "STARTED")
        queued = await (await client.get(f"/sheets/reprocess/{second}/status")).json()
        detect_pool_gate.set()
        assert await asyncio.to_thread(manager.wait, second, TIMEOUT_S)
        done = await (await client.get(f"/sheets/reprocess/{second}/status")).json()

    assert queued["status"] == "PENDING"
    assert queued["result"] == {}
    assert done["status"] == "SUCCESS"


async def wait_for_status(client: Any, task_id: str, status: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        body = await (await client.get(f"/sheets/reprocess/{task_id}/status")).json()
        if body["status"] == status:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"task {task_id} never reached {status}")


async def test_task_started_in_manager_is_followed_over_http(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int]
) -> None:
    async with serving(make_app()) as client:
        task_id = await asyncio.to_thread(
            manager.submit, ReprocessRequest(tuple(sheet_ids), 2)
        )
        read = await follow(client, task_id, "/api")

    assert read.events[-1].event == "complete"
    assert [e.id for e in read.events] == list(range(1, len(read.events) + 1))


# -- Reconnecting and late subscribers ---------------------------------------


async def test_reconnect_resumes_after_last_event_id(
    make_app: AppFactory, sheet_ids: list[int]
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids)
        response = await client.get(f"/sheets/reprocess/{task_id}/stream")
        first = await read_stream(response, stop_after=3)
        response.close()
        resumed = await follow(client, task_id, last_event_id=first.events[-1].id)
        full = await follow(client, task_id)

    assert [e.id for e in first.events] == [1, 2, 3]
    assert [e.id for e in resumed.events] == [e.id for e in full.events[3:]]
    assert resumed.events[-1].event == "complete"


async def test_late_subscriber_gets_history_then_complete(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int]
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids)
        assert await asyncio.to_thread(manager.wait, task_id, TIMEOUT_S)
        started = time.monotonic()
        late = await follow(client, task_id)
        elapsed_s = time.monotonic() - started

    with psycopg.connect(manager.database.conninfo) as conn:
        stored = task_store.events_after(conn, task_id)
    assert [(e.id, e.event) for e in late.events] == [
        (s.event_id, s.event) for s in stored
    ]
    assert late.events[-1].event == "complete"
    assert elapsed_s < 5


async def test_seen_terminal_event_is_sent_again(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int]
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids)
        full = await follow(client, task_id)
        last_id = full.events[-1].id
        again = await follow(client, task_id, last_event_id=last_id)
        beyond = await follow(client, task_id, last_event_id=last_id + 50)
        before_last = await follow(client, task_id, last_event_id=last_id - 1)

    assert [(e.id, e.event) for e in again.events] == [(last_id, "complete")]
    assert [(e.id, e.event) for e in beyond.events] == [(last_id, "complete")]
    assert [(e.id, e.event) for e in before_last.events] == [(last_id, "complete")]


async def test_task_of_earlier_run_streams_history_and_status(
    database: Database, manager: TaskManager, sheet_ids: list[int]
) -> None:
    task_id = await asyncio.to_thread(
        manager.submit, ReprocessRequest(tuple(sheet_ids), 2)
    )
    assert await asyncio.to_thread(manager.wait, task_id, TIMEOUT_S)
    await asyncio.to_thread(manager.shutdown)
    with ThreadPoolExecutor(WORKERS) as pool:
        restarted = await asyncio.to_thread(TaskManager, database, pool, WORKERS)
        app = create_app(restarted, heartbeat_s=0.2)
        async with serving(app) as client:
            read = await follow(client, task_id)
            status = await (
                await client.get(f"/sheets/reprocess/{task_id}/status")
            ).json()
        restarted.shutdown()

    assert read.events[-1].event == "complete"
    assert [e.id for e in read.events] == list(range(1, len(read.events) + 1))
    assert status["status"] == "SUCCESS"


async def test_interrupted_task_ends_with_error_from_row(
    make_app: AppFactory, db_conninfo: str, sheet_ids: list[int]
) -> None:
    task_id = str(uuid.uuid4())
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        task_store.create_task(conn, task_id, 2, sheet_ids, {})
        task_store.append_event(conn, task_id, 1, "progress", {"stage": "Loading"})
        task_store.mark_failed(conn, task_id, "interrupted", {})
    async with serving(make_app()) as client:
        read = await follow(client, task_id)
        status = await (await client.get(f"/sheets/reprocess/{task_id}/status")).json()

    assert [(e.id, e.event) for e in read.events] == [(1, "progress"), (2, "error")]
    error = read.events[-1].json
    assert error["status"] == "FAILURE"
    assert "interrupted" in error["message"]
    assert status["status"] == "FAILURE"
    assert status["result"]["reason"] == "interrupted"


async def test_task_of_killed_process_ends_stream(
    make_app: AppFactory, db_conninfo: str, sheet_ids: list[int]
) -> None:
    # A command line reprocess on this host, killed after its first event,
    # while the server was already running.
    async with serving(make_app()) as client:
        task_id = str(uuid.uuid4())
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            task_store.create_task(conn, task_id, 2, sheet_ids, {})
            task_store.mark_started(conn, task_id)
            task_store.append_event(conn, task_id, 1, "progress", {"stage": "Loading"})
            conn.execute(
                "UPDATE reprocess_tasks SET runner_pid = %s WHERE task_id = %s",
                (dead_pid(), task_id),
            )
        read = await follow(client, task_id)
        status = await (await client.get(f"/sheets/reprocess/{task_id}/status")).json()

    assert [(e.id, e.event) for e in read.events] == [(1, "progress"), (2, "error")]
    assert read.events[-1].json["result"]["reason"] == "interrupted"
    assert status["status"] == "FAILURE"
    assert status["result"]["reason"] == "interrupted"


# -- A failing task ----------------------------------------------------------


async def test_failing_task_sends_error_event_with_data(
    make_app: AppFactory, db_conninfo: str, sheet_ids: list[int]
) -> None:
    delete_images(db_conninfo, sheet_ids)
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids)
        read = await follow(client, task_id, "/api")
        late = await follow(client, task_id, "/api")
        status = await (await client.get(f"/sheets/reprocess/{task_id}/status")).json()

    last = read.events[-1]
    assert last.event == "error"
    assert last.json["status"] == "FAILURE"
    assert last.json["stage"] == "Failed"
    assert "No sheet could be read" in last.json["message"]
    assert [e.event for e in read.events[:-1]] == ["progress"] * (len(read.events) - 1)
    assert [e.id for e in late.events] == [e.id for e in read.events]
    assert status["status"] == "FAILURE"
    assert "No sheet could be read" in status["result"]["reason"]


# -- A task another process runs, heartbeats, framing --------------------------


async def test_task_of_other_process_is_polled_with_heartbeats(
    make_app: AppFactory, db_conninfo: str, sheet_ids: list[int]
) -> None:
    task_id = str(uuid.uuid4())
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        task_store.create_task(conn, task_id, 2, sheet_ids, {})
        conn.execute(
            "UPDATE reprocess_tasks SET runner_host = 'other-host' WHERE task_id = %s",
            (task_id,),
        )
        task_store.append_event(conn, task_id, 1, "progress", {"stage": "Loading"})
    async with serving(make_app()) as client:
        response = await client.get(f"/sheets/reprocess/{task_id}/stream")
        reader = asyncio.ensure_future(read_stream(response))
        await asyncio.sleep(1.0)
        with psycopg.connect(db_conninfo, autocommit=True) as conn:
            task_store.mark_failed(conn, task_id, "disk full", {})
            task_store.append_event(
                conn, task_id, 2, "error", {"status": "FAILURE", "message": "x"}
            )
        read = await asyncio.wait_for(reader, TIMEOUT_S)

    assert [(e.id, e.event) for e in read.events] == [(1, "progress"), (2, "error")]
    assert read.comments.count("heartbeat") >= 3


async def test_live_stream_sends_heartbeats_while_idle(
    make_app: AppFactory,
    detect_pool_gate: threading.Event,
    sheet_ids: list[int],
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids)
        response = await client.get(f"/sheets/reprocess/{task_id}/stream")
        reader = asyncio.ensure_future(read_stream(response))
        # Detection is held, so the stream stays silent but for heartbeats.
        await asyncio.sleep(1.0)
        detect_pool_gate.set()
        read = await asyncio.wait_for(reader, TIMEOUT_S)

    assert read.comments.count("heartbeat") >= 3
    assert read.events[-1].event == "complete"
    assert [e.id for e in read.events] == list(range(1, len(read.events) + 1))


async def test_failing_stream_closes_and_server_stays_up(
    make_app: AppFactory,
    db_conninfo: str,
    sheet_ids: list[int],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_id = str(uuid.uuid4())
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        task_store.create_task(conn, task_id, 2, sheet_ids, {})
        conn.execute(
            "UPDATE reprocess_tasks SET runner_host = 'other-host' WHERE task_id = %s",
            (task_id,),
        )
    calls: list[int] = []
    original = db_calls.read_task

    def fails_on_second_read(*args: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("poll failed")
        return original(*args)

    monkeypatch.setattr(db_calls, "read_task", fails_on_second_read)
    async with serving(make_app()) as client:
        response = await client.get(f"/sheets/reprocess/{task_id}/stream")
        read = await asyncio.wait_for(read_stream(response), TIMEOUT_S)
        health = await client.get("/health")

    assert read.events == []
    assert read.retry == [3000]
    assert health.status == 200
    assert any("failed; closing it" in r.getMessage() for r in caplog.records)


def test_multiline_data_framed_per_line() -> None:
    frame = format_event(7, "progress", "first\nsecond\r\nthird\rfourth")

    assert frame == (
        b"id: 7\nevent: progress\n"
        b"data: first\ndata: second\ndata: third\ndata: fourth\n\n"
    )


def test_one_line_json_is_one_data_line() -> None:
    frame = format_event(1, "error", json.dumps({"message": "a\nb"}))

    assert frame.count(b"data:") == 1
    assert b'"a\\nb"' in frame


# -- Bad input -----------------------------------------------------------------

JSON = "application/json"

BAD_BODIES = [
    ("malformed JSON", b'{"sheet_ids": [1,', JSON, 400, "not valid JSON"),
    ("not UTF-8", b'{"sheet_ids": [1], "profile_id": "\xff"}', JSON, 400, "JSON"),
    ("NaN", b'{"sheet_ids": [NaN], "profile_id": 2}', JSON, 400, "JSON"),
    (
        "text content type",
        b'{"sheet_ids": [1], "profile_id": 2}',
        "text/plain",
        415,
        "application/json",
    ),
    (
        "form content type",
        b"sheet_ids=1&profile_id=2",
        "application/x-www-form-urlencoded",
        415,
        "application/json",
    ),
    ("no content type", b'{"sheet_ids": [1], "profile_id": 2}', "", 415, "none"),
    ("array body", b"[1, 2]", JSON, 400, "JSON object"),
    ("string body", b'"hello"', JSON, 400, "JSON object"),
    ("missing sheet_ids", b'{"profile_id": 2}', JSON, 400, "Missing field: sheet_ids"),
    (
        "missing profile_id",
        b'{"sheet_ids": [1]}',
        JSON,
        400,
        "Missing field: profile_id",
    ),
    ("missing both", b"{}", JSON, 400, "sheet_ids, profile_id"),
    (
        "sheet_ids a string",
        b'{"sheet_ids": "1,2", "profile_id": 2}',
        JSON,
        400,
        "a string",
    ),
    (
        "sheet_ids an object",
        b'{"sheet_ids": {"1": 1}, "profile_id": 2}',
        JSON,
        400,
        "an object",
    ),
    ("sheet_ids null", b'{"sheet_ids": null, "profile_id": 2}', JSON, 400, "null"),
    (
        "string id",
        b'{"sheet_ids": [1, "2"], "profile_id": 2}',
        JSON,
        400,
        "sheet_ids[1]",
    ),
    ("float id", b'{"sheet_ids": [1.5], "profile_id": 2}', JSON, 400, "sheet_ids[0]"),
    (
        "whole float id",
        b'{"sheet_ids": [1.0], "profile_id": 2}',
        JSON,
        400,
        "sheet_ids[0]",
    ),
    (
        "exponent id",
        b'{"sheet_ids": [1e3], "profile_id": 2}',
        JSON,
        400,
        "sheet_ids[0]",
    ),
    ("boolean id", b'{"sheet_ids": [true], "profile_id": 2}', JSON, 400, "a boolean"),
    ("negative id", b'{"sheet_ids": [-4], "profile_id": 2}', JSON, 400, "sheet_ids[0]"),
    ("zero id", b'{"sheet_ids": [0], "profile_id": 2}', JSON, 400, "sheet_ids[0]"),
    ("null id", b'{"sheet_ids": [null], "profile_id": 2}', JSON, 400, "null"),
    (
        "nested array id",
        b'{"sheet_ids": [[1]], "profile_id": 2}',
        JSON,
        400,
        "an array",
    ),
    (
        "id past bigint",
        b'{"sheet_ids": [9223372036854775808], "profile_id": 2}',
        JSON,
        400,
        "sheet_ids[0]",
    ),
    ("empty selection", b'{"sheet_ids": [], "profile_id": 2}', JSON, 400, "empty"),
    (
        "string profile",
        b'{"sheet_ids": [1], "profile_id": "2"}',
        JSON,
        400,
        "profile_id",
    ),
    (
        "boolean profile",
        b'{"sheet_ids": [1], "profile_id": true}',
        JSON,
        400,
        "profile_id",
    ),
    (
        "float profile",
        b'{"sheet_ids": [1], "profile_id": 2.0}',
        JSON,
        400,
        "profile_id",
    ),
    ("zero profile", b'{"sheet_ids": [1], "profile_id": 0}', JSON, 400, "profile_id"),
    (
        "null profile",
        b'{"sheet_ids": [1], "profile_id": null}',
        JSON,
        400,
        "profile_id",
    ),
    (
        "profile past integer",
        b'{"sheet_ids": [1], "profile_id": 2147483648}',
        JSON,
        400,
        "profile_id",
    ),
    (
        "id of 5,000 digits",
        b'{"sheet_ids": [' + b"9" * 5000 + b'], "profile_id": 2}',
        JSON,
        400,
        "sheet_ids[0] is an integer of 5,000 digits, out of range",
    ),
    (
        "negative id of 5,000 digits",
        b'{"sheet_ids": [1, -' + b"9" * 5000 + b'], "profile_id": 2}',
        JSON,
        400,
        "sheet_ids[1] is an integer of 5,000 digits, out of range",
    ),
    (
        "profile of 20 digits",
        b'{"sheet_ids": [1], "profile_id": ' + b"9" * 20 + b"}",
        JSON,
        400,
        "profile_id is an integer of 20 digits, out of range",
    ),
    (
        "too many ids",
        json.dumps(
            {"sheet_ids": list(range(1, MAX_SHEETS_PER_TASK + 2)), "profile_id": 2}
        ).encode(),
        JSON,
        413,
        "100,001",
    ),
    (
        "body over 10 MB",
        b'{"sheet_ids": [1], "profile_id": 2, "pad": "'
        + b"x" * (10 * 1024 * 1024)
        + b'"}',
        JSON,
        413,
        "10 MB",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "fragment"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
async def test_bad_request_body_is_rejected_with_json(
    make_app: AppFactory,
    db_conninfo: str,
    sheet_ids: list[int],
    body: bytes,
    content_type: str,
    status: int,
    fragment: str,
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with serving(make_app()) as client:
        response = await client.post(
            "/api/sheets/reprocess",
            data=body,
            headers=headers,
            skip_auto_headers=["Content-Type"],
        )
        payload = await response.json()
        health = await client.get("/health")

    assert response.status == status
    assert response.content_type == "application/json"
    assert payload["status"] == "error"
    assert fragment in payload["message"]
    assert "Traceback" not in payload["message"]
    assert "set_int_max_str_digits" not in payload["message"]
    assert task_count(db_conninfo) == 0
    assert health.status == 200


async def test_unknown_profile_is_404(
    make_app: AppFactory, db_conninfo: str, sheet_ids: list[int]
) -> None:
    async with serving(make_app()) as client:
        response = await client.post(
            "/sheets/reprocess", json={"sheet_ids": sheet_ids, "profile_id": 999}
        )
        payload = await response.json()

    assert response.status == 404
    assert payload["status"] == "error"
    assert "Profile 999 does not exist" in payload["message"]
    assert "1 Default, 2 Sensitive, 3 Strict" in payload["message"]
    assert "--help" not in payload["message"]
    assert task_count(db_conninfo) == 0


async def test_unknown_sheets_are_404_naming_twenty(
    make_app: AppFactory, db_conninfo: str, sheet_ids: list[int]
) -> None:
    unknown = list(range(900_001, 900_026))
    async with serving(make_app()) as client:
        response = await client.post(
            "/sheets/reprocess",
            json={"sheet_ids": sheet_ids + unknown, "profile_id": 2},
        )
        payload = await response.json()

    assert response.status == 404
    assert payload["sheet_ids"] == unknown[:20]
    assert "900001" in payload["message"]
    assert "900020" in payload["message"]
    assert "900021" not in payload["message"]
    assert "and 5 more" in payload["message"]
    assert task_count(db_conninfo) == 0


async def test_duplicate_sheet_ids_are_dropped(
    make_app: AppFactory, manager: TaskManager, db_conninfo: str, sheet_ids: list[int]
) -> None:
    first, second = sheet_ids[:2]
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, [second, first, second, first])
        read = await follow(client, task_id)

    with psycopg.connect(db_conninfo) as conn:
        task = task_store.get_task(conn, task_id)
    assert task is not None
    assert task.sheet_ids == [second, first]
    assert read.events[-1].json["result"]["sheets_total"] == 2


async def test_overlapping_selection_is_409_naming_task(
    make_app: AppFactory,
    manager: TaskManager,
    detect_pool_gate: threading.Event,
    db_conninfo: str,
    sheet_ids: list[int],
) -> None:
    async with serving(make_app()) as client:
        running = await post_reprocess(client, sheet_ids[:2])
        queued = await post_reprocess(client, sheet_ids[2:3])
        on_running = await client.post(
            "/sheets/reprocess", json={"sheet_ids": sheet_ids[1:2], "profile_id": 3}
        )
        on_queued = await client.post(
            "/api/sheets/reprocess",
            json={"sheet_ids": sheet_ids[2:], "profile_id": 3},
        )
        running_body = await on_running.json()
        queued_body = await on_queued.json()
        detect_pool_gate.set()
        done = await follow(client, queued)

    assert on_running.status == 409
    assert running_body["status"] == "error"
    assert running_body["task_id"] == running
    assert running in running_body["message"]
    assert on_queued.status == 409
    assert queued_body["task_id"] == queued
    assert done.events[-1].event == "complete"
    assert task_count(db_conninfo) == 2


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("endpoint", ["stream", "status"])
@pytest.mark.parametrize(
    "task_id",
    [
        "c8f2b3c4-0000-4000-8000-000000000000",
        "not-a-task",
        "1234",
        "c8f2b3c4-0000-4000-8000-00000000000g",
    ],
)
async def test_unknown_or_malformed_task_id_is_404(
    make_app: AppFactory, prefix: str, endpoint: str, task_id: str
) -> None:
    async with serving(make_app()) as client:
        response = await client.get(f"{prefix}/sheets/reprocess/{task_id}/{endpoint}")
        payload = await response.json()

    assert response.status == 404
    assert payload["status"] == "error"
    assert "No task" in payload["message"]


async def test_malformed_last_event_id_is_400(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int]
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids)
        response = await client.get(
            f"/sheets/reprocess/{task_id}/stream", headers={"Last-Event-ID": "abc"}
        )
        payload = await response.json()

    assert response.status == 400
    assert "Last-Event-ID" in payload["message"]


async def test_huge_last_event_id_out_of_range(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int]
) -> None:
    async with serving(make_app()) as client:
        task_id = await post_reprocess(client, sheet_ids)
        response = await client.get(
            f"/sheets/reprocess/{task_id}/stream", headers={"Last-Event-ID": "9" * 23}
        )
        payload = await response.json()

    assert response.status == 400
    assert payload["message"].startswith(f"Last-Event-ID {'9' * 23} is out of range")


async def test_long_task_id_shortened_in_404(make_app: AppFactory) -> None:
    async with serving(make_app()) as client:
        response = await client.get(f"/sheets/reprocess/{'x' * 5000}/status")
        payload = await response.json()

    assert response.status == 404
    assert len(payload["message"]) < 200


async def test_unknown_route_and_wrong_method_get_json_errors(
    make_app: AppFactory,
) -> None:
    async with serving(make_app()) as client:
        missing = await client.get("/sheets/nothing")
        wrong_method = await client.get("/sheets/reprocess")
        missing_body = await missing.json()
        wrong_body = await wrong_method.json()

    assert missing.status == 404
    assert missing_body["status"] == "error"
    assert wrong_method.status == 405
    assert wrong_body["status"] == "error"
    assert "POST" in wrong_method.headers["Allow"]


async def test_unexpected_exception_is_500_without_traceback(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(connections: Any) -> None:
        raise KeyError("secret internals")

    monkeypatch.setattr(db_calls, "read_profiles", broken)
    async with serving(make_app()) as client:
        response = await client.get("/profiles")
        payload = await response.json()
        health = await client.get("/health")

    assert response.status == 500
    assert payload["status"] == "error"
    assert "secret internals" not in payload["message"]
    assert health.status == 200


# -- Profiles and health -------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_profiles_lists_builtin_profiles(
    make_app: AppFactory, prefix: str
) -> None:
    async with serving(make_app()) as client:
        response = await client.get(f"{prefix}/profiles")
        payload = await response.json()

    assert response.status == 200
    profiles = payload["profiles"]
    assert [p["id"] for p in profiles][:3] == [1, 2, 3]
    assert profiles[1]["name"] == "Sensitive"
    assert set(profiles[0]) == {"id", "name", "description", "builtin"}
    assert all(p["builtin"] for p in profiles[:3])


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_health_reports_database_ok(make_app: AppFactory, prefix: str) -> None:
    async with serving(make_app()) as client:
        response = await client.get(f"{prefix}/health")
        payload = await response.json()

    assert response.status == 200
    assert payload["status"] == "ok"
    assert payload["database"] == "ok"
    assert payload["active_tasks"] == 0


async def test_health_is_503_without_database(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(connections: Any) -> None:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(db_calls, "check_database", unreachable)
    async with serving(make_app()) as client:
        response = await client.get("/health")
        payload = await response.json()

    assert response.status == 503
    assert payload["status"] == "error"
    assert payload["database"] == "unreachable"


async def test_health_is_503_on_newer_schema(
    make_app: AppFactory, db_conninfo: str
) -> None:
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        newer = mark_migrated_by_newer_version(conn)
    async with serving(make_app()) as client:
        response = await client.get("/health")
        payload = await response.json()

    assert response.status == 503
    assert payload["database"] == "schema newer"
    assert f"schema version {newer}, newer than" in payload["message"]


async def test_database_work_runs_off_the_loop_thread(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, sheet_ids: list[int]
) -> None:
    threads: list[str] = []
    original_read_task = db_calls.read_task
    original_profiles = db_calls.read_profiles

    def read_task(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original_read_task(*args)

    def read_profiles(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return original_profiles(*args)

    monkeypatch.setattr(db_calls, "read_task", read_task)
    monkeypatch.setattr(db_calls, "read_profiles", read_profiles)
    async with serving(make_app()) as client:
        await client.get("/profiles")
        task_id = await post_reprocess(client, sheet_ids)
        await follow(client, task_id)

    assert len(threads) >= 2
    assert all(name.startswith("http-db") for name in threads), threads


# -- Token, access log, CORS ---------------------------------------------------

TOKEN = "s3cret-token-value"


async def test_token_is_required_on_every_route(
    make_app: AppFactory, sheet_ids: list[int]
) -> None:
    async with serving(make_app(token=TOKEN)) as client:
        bare = await client.get("/health")
        wrong = await client.get("/health", headers={"Authorization": "Bearer nope"})
        basic = await client.get("/health", headers={"Authorization": f"Basic {TOKEN}"})
        right = await client.get(
            "/health", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        post_bare = await client.post(
            "/sheets/reprocess", json={"sheet_ids": sheet_ids, "profile_id": 2}
        )
        bare_body = await bare.json()

    assert bare.status == 401
    assert bare_body["status"] == "error"
    assert bare.headers["WWW-Authenticate"].startswith("Bearer")
    assert wrong.status == 401
    assert basic.status == 401
    assert right.status == 200
    assert post_bare.status == 401


async def test_query_token_accepted_on_stream_only(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int]
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with serving(make_app(token=TOKEN)) as client:
        response = await client.post(
            "/sheets/reprocess",
            json={"sheet_ids": sheet_ids, "profile_id": 2},
            headers=auth,
        )
        task_id = (await response.json())["task_id"]
        streamed = await follow(client, task_id, "/api", params={"token": TOKEN})
        status = await client.get(
            f"/sheets/reprocess/{task_id}/status", params={"token": TOKEN}
        )
        wrong = await client.get(
            f"/sheets/reprocess/{task_id}/stream", params={"token": "nope"}
        )

    assert streamed.events[-1].event == "complete"
    assert status.status == 401
    assert wrong.status == 401


async def test_query_token_stays_out_of_access_log(
    make_app: AppFactory,
    manager: TaskManager,
    sheet_ids: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with serving(make_app(token=TOKEN)) as client:
        response = await client.post(
            "/sheets/reprocess",
            json={"sheet_ids": sheet_ids, "profile_id": 2},
            headers=auth,
        )
        task_id = (await response.json())["task_id"]
        await follow(client, task_id, params={"token": TOKEN})
        await client.get(f"/sheets/reprocess/{task_id}/stream", params={"token": "x"})

    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    stream_lines = [line for line in access if "/stream" in line]
    assert len(stream_lines) == 2
    assert all(TOKEN not in line for line in access)
    assert all("token=" not in line for line in access)


def test_non_loopback_address_needs_token(manager: TaskManager) -> None:
    open_app = create_app(manager)
    locked_app = create_app(manager, token=TOKEN)

    for host in ["0.0.0.0", "192.168.1.20", "::", "", "example.org"]:
        with pytest.raises(ServerConfigError, match="needs a token"):
            check_bind_address(open_app, host)
        check_bind_address(locked_app, host)
    for host in ["127.0.0.1", "::1", "localhost", "127.0.0.2"]:
        check_bind_address(open_app, host)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8765", ("127.0.0.1", 8765)),
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("localhost:9000", ("localhost", 9000)),
        ("[::1]:8765", ("::1", 8765)),
        (":8765", ("127.0.0.1", 8765)),
    ],
)
def test_parse_address_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["", "http", "host:", "1:2:3", "70000", "h:-1"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ServerConfigError):
        parse_address(text)


def test_loopback_names() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("[::1]")
    assert is_loopback("LOCALHOST")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("localhost.example.org")


async def test_start_server_refuses_open_address_without_token(
    manager: TaskManager,
) -> None:
    with pytest.raises(ServerConfigError):
        await start_server(create_app(manager), "0.0.0.0", 0)


async def test_start_server_reports_free_port_and_serves(
    manager: TaskManager, sheet_ids: list[int]
) -> None:
    runner, port = await start_server(create_app(manager), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            health = await session.get("/api/health")
            payload = await health.json()
    finally:
        await runner.cleanup()

    assert port > 0
    assert health.status == 200
    assert payload["status"] == "ok"


async def test_stopping_server_ends_open_streams(
    manager: TaskManager, db_conninfo: str, sheet_ids: list[int]
) -> None:
    task_id = str(uuid.uuid4())
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        task_store.create_task(conn, task_id, 2, sheet_ids, {})
        conn.execute(
            "UPDATE reprocess_tasks SET runner_host = 'other-host' WHERE task_id = %s",
            (task_id,),
        )
    app = create_app(manager, heartbeat_s=0.2, poll_interval_s=0.1)
    runner, port = await start_server(app, "127.0.0.1", 0)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        response = await session.get(f"/sheets/reprocess/{task_id}/stream")
        reader = asyncio.ensure_future(read_stream(response))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        await runner.cleanup()
        read = await asyncio.wait_for(reader, 10)
        elapsed_s = time.monotonic() - started

    assert read.events == []
    assert elapsed_s < 3


ALLOWED = "http://app.example:5173"


async def test_cors_is_off_by_default(make_app: AppFactory) -> None:
    async with serving(make_app()) as client:
        plain = await client.get("/health", headers={"Origin": ALLOWED})
        preflight = await client.options(
            "/sheets/reprocess",
            headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"},
        )

    assert "Access-Control-Allow-Origin" not in plain.headers
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert preflight.status == 405


async def test_cors_allow_list(
    make_app: AppFactory, manager: TaskManager, sheet_ids: list[int]
) -> None:
    request_headers = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with serving(make_app(cors_origins=[ALLOWED])) as client:
        allowed = await client.options(
            "/api/sheets/reprocess", headers={"Origin": ALLOWED, **request_headers}
        )
        other = await client.options(
            "/api/sheets/reprocess",
            headers={"Origin": "http://evil.example", **request_headers},
        )
        post = await client.post(
            "/api/sheets/reprocess",
            json={"sheet_ids": sheet_ids, "profile_id": 2},
            headers={"Origin": ALLOWED},
        )
        task_id = (await post.json())["task_id"]
        stream = await client.get(
            f"/api/sheets/reprocess/{task_id}/stream", headers={"Origin": ALLOWED}
        )
        await read_stream(stream)
        foreign = await client.get("/health", headers={"Origin": "http://evil.example"})

    assert allowed.status == 204
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert allowed.headers.getall("Vary") == ["Origin"]
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in allowed.headers["Access-Control-Allow-Headers"]
    assert other.status == 403
    assert "Access-Control-Allow-Origin" not in other.headers
    assert post.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert stream.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Origin" in stream.headers["Vary"]
    assert foreign.status == 200
    assert "Access-Control-Allow-Origin" not in foreign.headers
