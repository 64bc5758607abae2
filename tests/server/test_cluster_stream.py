"""The stream of a cluster task, read from the cluster's Redis.

The task is sent straight to Celery, as the web deployment sends it, and
run by a real worker subprocess; this server's database contains its row
but none of its events. A headless Chromium follows it with ``EventSource``,
as it follows a local task, and a late client gets the whole history.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from aiohttp import web

from omr_desktop.pipeline import events as ev
from omr_desktop.server.app import create_app
from omr_desktop.server.sse import HUB
from tests.cluster.conftest import (  # noqa: F401 - fixtures used by name
    celery_app,
    cluster_settings,
    redis_events,
    redis_url,
    start_worker,
)
from tests.server.conftest import TIMEOUT_S, serving
from tests.server.test_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.db, pytest.mark.slow]

from omr_desktop.cluster.redis_stream import RedisEventSource  # noqa: E402
from omr_desktop.cluster.tasks import TASK_NAME  # noqa: E402

FOLLOW_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Cluster client</title></head>
<body>
<script>
window.received = [];
window.finished = false;

function follow(taskId) {
  const source = new EventSource(`/api/sheets/reprocess/${taskId}/stream`);
  for (const name of ["progress", "complete"]) {
    source.addEventListener(name, (e) => {
      const data = JSON.parse(e.data);
      received.push({type: name, id: Number(e.lastEventId),
                     stage: data.stage, percentage: data.progress_percentage,
                     processed: data.processed});
      if (name === "complete") { source.close(); finished = true; }
    });
  }
  source.addEventListener("error", (e) => {
    received.push({type: "error", id: Number(e.lastEventId),
                   data: e.data ? JSON.parse(e.data) : null});
    source.close();
    finished = true;
  });
}
</script>
</body></html>
"""


async def follow_page(request: web.Request) -> web.Response:
    return web.Response(text=FOLLOW_PAGE, content_type="text/html")


def send(app: Any, sheet_ids: list[int]) -> str:
    task_id = str(uuid.uuid4())
    app.send_task(
        TASK_NAME,
        args=[task_id, sheet_ids, 2],
        kwargs={"chunk_sheets": 1},
        task_id=task_id,
    )
    return task_id


def wait_for_row(dsn: str, task_id: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    with psycopg.connect(dsn, autocommit=True) as conn:
        while (
            conn.execute(
                "SELECT 1 FROM reprocess_tasks WHERE task_id = %s", (task_id,)
            ).fetchone()
            is None
        ):
            assert time.monotonic() < deadline, "the worker never took the task"
            time.sleep(0.02)


async def follow_in_browser(client: Any, task_id: str) -> list[dict[str, Any]]:
    from playwright.async_api import async_playwright

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(str(client.make_url("/test-follow")))
            await page.evaluate("(id) => follow(id)", task_id)
            await page.wait_for_function(
                "window.finished", timeout=TIMEOUT_S * 1000, polling=50
            )
            return list(await page.evaluate("window.received"))
        finally:
            await browser.close()


async def test_browser_follows_cluster_task(
    db_conninfo: str,
    sheet_ids: list[int],
    manager: Any,
    start_worker: Callable[..., Any],  # noqa: F811
    celery_app: Any,  # noqa: F811
    redis_events: Any,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> None:
    await asyncio.to_thread(start_worker, db_conninfo, 1)
    app = create_app(
        manager, heartbeat_s=0.2, cluster_events=RedisEventSource(redis_url)
    )
    app.router.add_get("/test-follow", follow_page)
    async with serving(app) as client:
        task_id = send(celery_app, sheet_ids)
        await asyncio.to_thread(wait_for_row, db_conninfo, task_id)
        received = await follow_in_browser(client, task_id)
        late = await follow_in_browser(client, task_id)
        assert app[HUB].subscriber_count() == 0

    stored = redis_events.history(task_id)
    assert [e["id"] for e in received] == [e["event_id"] for e in stored]
    assert [e["type"] for e in received] == [e["event"] for e in stored]
    assert received[-1]["type"] == ev.COMPLETE
    assert [e["type"] for e in received[:-1]] == ["progress"] * (len(received) - 1)
    processed = [e["processed"] for e in received]
    assert processed == sorted(processed)
    assert max(processed) == len(sheet_ids)
    assert {e["stage"] for e in received} == set(ev.STAGES)
    assert late == received


async def test_cluster_stream_resumes_after_last_event_id(
    db_conninfo: str,
    sheet_ids: list[int],
    manager: Any,
    start_worker: Callable[..., Any],  # noqa: F811
    celery_app: Any,  # noqa: F811
    redis_events: Any,  # noqa: F811
    redis_url: str,  # noqa: F811
) -> None:
    await asyncio.to_thread(start_worker, db_conninfo, 1)
    app = create_app(
        manager, heartbeat_s=0.2, cluster_events=RedisEventSource(redis_url)
    )
    async with serving(app) as client:
        task_id = send(celery_app, sheet_ids)
        await asyncio.to_thread(wait_for_row, db_conninfo, task_id)
        url = f"/sheets/reprocess/{task_id}/stream"
        async with client.get(url, headers={"Last-Event-ID": "3"}) as response:
            text = await response.text()
        async with client.get(url, headers={"Last-Event-ID": "999"}) as response:
            again = await response.text()

    ids = [int(line[4:]) for line in text.splitlines() if line.startswith("id: ")]
    total = len(redis_events.history(task_id))
    assert ids == list(range(4, total + 1))
    assert "event: complete" in text
    # A client that has seen everything gets the terminal event again.
    assert [line for line in again.splitlines() if line.startswith("event:")] == [
        "event: complete"
    ]
