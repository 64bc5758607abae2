"""Many streams on one task, many tasks back to back: no event lost or reordered."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from aiohttp import web

from omr_desktop.db import task_store
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.server.sse import HUB
from tests.server.conftest import TIMEOUT_S, WORKERS, StreamRead, read_stream, serving

pytestmark = [pytest.mark.db, pytest.mark.slow]

CLIENTS = 50
TASKS = 20


@pytest.fixture
def many_sheet_ids(db_conninfo: str, tmp_path: Path) -> list[int]:
    """Seed one demo sheet per task; return their ids."""
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path, sheets=TASKS, workers=WORKERS)
        return [int(r[0]) for r in conn.execute("SELECT id FROM sheets ORDER BY id")]


def stored_events(conninfo: str, task_id: str) -> list[tuple[int, str]]:
    with psycopg.connect(conninfo) as conn:
        return [(e.event_id, e.event) for e in task_store.events_after(conn, task_id)]


def delivered(read: StreamRead) -> list[tuple[int, str]]:
    return [(e.id, e.event) for e in read.events]


async def test_fifty_clients_follow_one_task(
    make_app: Callable[..., web.Application],
    detect_pool_gate: threading.Event,
    db_conninfo: str,
    many_sheet_ids: list[int],
) -> None:
    app = make_app()
    async with serving(app) as client:
        response = await client.post(
            "/sheets/reprocess",
            json={"sheet_ids": many_sheet_ids[:8], "profile_id": 2},
        )
        task_id = (await response.json())["task_id"]

        async def follow() -> StreamRead:
            stream = await client.get(f"/api/sheets/reprocess/{task_id}/stream")
            return await read_stream(stream)

        readers = [asyncio.ensure_future(follow()) for _ in range(CLIENTS)]
        deadline = time.monotonic() + TIMEOUT_S
        while app[HUB].subscriber_count() < CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # Every client follows live from here on.
        detect_pool_gate.set()
        reads = await asyncio.gather(*readers)

    expected = stored_events(db_conninfo, task_id)
    assert expected[-1][1] == "complete"
    assert [e[0] for e in expected] == list(range(1, len(expected) + 1))
    for read in reads:
        assert delivered(read) == expected


async def test_twenty_tasks_posted_back_to_back(
    make_app: Callable[..., web.Application],
    db_conninfo: str,
    many_sheet_ids: list[int],
) -> None:
    async with serving(make_app()) as client:
        task_ids = []
        for sheet_id in many_sheet_ids:
            response = await client.post(
                "/api/sheets/reprocess",
                json={"sheet_ids": [sheet_id], "profile_id": 2},
            )
            assert response.status == 200
            task_ids.append((await response.json())["task_id"])

        async def follow(task_id: str) -> StreamRead:
            stream = await client.get(f"/sheets/reprocess/{task_id}/stream")
            return await read_stream(stream)

        reads = await asyncio.gather(*(follow(t) for t in task_ids))

    with psycopg.connect(db_conninfo) as conn:
        rows = [task_store.get_task(conn, t) for t in task_ids]
    for task_id, read in zip(task_ids, reads, strict=True):
        expected = stored_events(db_conninfo, task_id)
        assert delivered(read) == expected
        assert expected[-1][1] == "complete"
    started = [row.started_at for row in rows if row is not None]
    assert len(started) == TASKS
    assert started == sorted(started)
    assert all(row is not None and row.status == "SUCCESS" for row in rows)
