"""A real browser follows a reprocess through ``EventSource``, as web clients do.

Headless Chromium (Debian's ``chromium`` package) driven by Python
playwright loads a page from the test server. The page posts the reprocess
and opens ``new EventSource("/api/sheets/reprocess/<id>/stream")``: on
``progress`` it parses the data and reads ``stage`` and
``progress_percentage``, on ``complete`` and ``error`` it closes the stream.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from aiohttp import web

from omr_desktop.db import task_store
from omr_desktop.pipeline import events as ev
from omr_desktop.server.sse import HUB
from tests.server.conftest import TIMEOUT_S, serving

pytestmark = [pytest.mark.db, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

CLIENT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Reprocess client</title></head>
<body>
<script>
window.received = [];
window.finished = false;

async function reprocess(sheetIds, profileId) {
  const response = await fetch("/api/sheets/reprocess", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({sheet_ids: sheetIds, profile_id: profileId}),
  });
  const body = await response.json();
  const source = new EventSource(`/api/sheets/reprocess/${body.task_id}/stream`);
  source.addEventListener("progress", (e) => {
    const data = JSON.parse(e.data);
    received.push({type: "progress", id: Number(e.lastEventId),
                   stage: data.stage, percentage: data.progress_percentage});
  });
  source.addEventListener("complete", (e) => {
    received.push({type: "complete", id: Number(e.lastEventId),
                   data: JSON.parse(e.data)});
    source.close();
    finished = true;
  });
  source.addEventListener("error", (e) => {
    // A failed task sends JSON data; a lost connection has none.
    received.push({type: "error", id: Number(e.lastEventId),
                   data: e.data ? JSON.parse(e.data) : null});
    source.close();
    finished = true;
  });
  return body.task_id;
}
</script>
</body></html>
"""


async def client_page(request: web.Request) -> web.Response:
    return web.Response(text=CLIENT_PAGE, content_type="text/html")


def browser_app(make_app: Callable[..., web.Application]) -> web.Application:
    app = make_app()
    app.router.add_get("/test-client", client_page)
    return app


async def run_in_browser(
    client: Any, sheet_ids: list[int], release: Callable[[], Any] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """Open the page in Chromium, start a reprocess from it, return what it got."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install playwright")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            await page.goto(str(client.make_url("/test-client")))
            task_id = await page.evaluate(
                "([ids, profile]) => reprocess(ids, profile)", [sheet_ids, 2]
            )
            if release is not None:
                await release()
            await page.wait_for_function(
                "window.finished", timeout=TIMEOUT_S * 1000, polling=50
            )
            received = await page.evaluate("window.received")
        finally:
            await browser.close()
    return str(task_id), list(received)


async def test_browser_receives_progress_in_order_then_complete(
    make_app: Callable[..., web.Application],
    detect_pool_gate: threading.Event,
    db_conninfo: str,
    sheet_ids: list[int],
) -> None:
    app = browser_app(make_app)

    async def release_once_subscribed() -> None:
        # The task waits for detection until the page's stream is open, so
        # the browser receives its events live, not from the history.
        deadline = time.monotonic() + TIMEOUT_S
        while app[HUB].subscriber_count() < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        detect_pool_gate.set()

    async with serving(app) as client:
        task_id, received = await run_in_browser(
            client, sheet_ids, release_once_subscribed
        )

    with psycopg.connect(db_conninfo) as conn:
        stored = task_store.events_after(conn, task_id)
    assert [(r["type"], r["id"]) for r in received] == [
        (e.event, e.event_id) for e in stored
    ]
    progress = [r for r in received if r["type"] == "progress"]
    assert len(progress) >= len(ev.STAGES) - 1
    stages = [ev.STAGES.index(r["stage"]) for r in progress]
    assert stages == sorted(stages)
    assert all(0 <= r["percentage"] <= 100 for r in progress)
    assert received[-1]["type"] == "complete"
    assert received[-1]["data"]["status"] == "SUCCESS"


async def test_browser_gets_error_with_data_for_failed_task(
    make_app: Callable[..., web.Application],
    db_conninfo: str,
    sheet_ids: list[int],
) -> None:
    with psycopg.connect(db_conninfo) as conn:
        paths = conn.execute(
            "SELECT image_path FROM sheets WHERE id = ANY(%s)", (sheet_ids,)
        ).fetchall()
    for (path,) in paths:
        os.remove(path)

    async with serving(browser_app(make_app)) as client:
        _task_id, received = await run_in_browser(client, sheet_ids)

    last = received[-1]
    assert last["type"] == "error"
    assert last["data"] is not None
    assert last["data"]["status"] == "FAILURE"
    assert "No sheet could be read" in last["data"]["message"]
    assert [r["type"] for r in received[:-1]] == ["progress"] * (len(received) - 1)
