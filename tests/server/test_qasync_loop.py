"""The server on the qasync loop, the one the GUI runs Qt and HTTP on."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from omr_desktop.pipeline.task_manager import TaskManager
from omr_desktop.server.app import create_app, start_server
from tests.server.conftest import TIMEOUT_S, read_stream

pytestmark = [pytest.mark.db, pytest.mark.gui]


def test_server_runs_on_qasync_loop(
    qapp: Any, manager: TaskManager, sheet_ids: list[int]
) -> None:
    # PySide6 first: qasync binds to the first Qt binding it finds.
    import PySide6.QtWidgets  # noqa: F401
    import qasync

    loop = qasync.QEventLoop(qapp)
    try:
        events = loop.run_until_complete(
            asyncio.wait_for(_reprocess_and_follow(manager, sheet_ids), TIMEOUT_S)
        )
    finally:
        loop.close()

    assert events[-1] == "complete"
    assert events[0] == "progress"


async def _reprocess_and_follow(
    manager: TaskManager, sheet_ids: list[int]
) -> list[str]:
    runner, port = await start_server(create_app(manager), "127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            response = await session.post(
                "/api/sheets/reprocess",
                json={"sheet_ids": sheet_ids, "profile_id": 2},
            )
            task_id = (await response.json())["task_id"]
            stream = await session.get(f"/api/sheets/reprocess/{task_id}/stream")
            read = await read_stream(stream)
    finally:
        await runner.cleanup()
    return [e.event for e in read.events]
