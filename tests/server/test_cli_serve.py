"""``omr-desktop serve`` in its own process: start, serve a task, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psycopg
import pytest

from tests.server.conftest import TIMEOUT_S, Event, read_stream

pytestmark = pytest.mark.db

# Runs the omr-desktop entry point with its log folder as the first argument.
DRIVER = """
import os, sys
os.environ["OMR_LOG_DIR"] = sys.argv[1]
from omr_desktop.cli import main
sys.exit(main(["--log-level", "INFO", *sys.argv[2:]]))
"""

LISTENING = re.compile(r"Serving on http://127\.0\.0\.1:(\d+)")


@pytest.fixture
def serve_env(db_conninfo: str, tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["OMR_DATABASE_URL"] = db_conninfo
    env["OMR_DATA_DIR"] = str(tmp_path / "data")
    for name in ("OMR_SERVER_HOST", "OMR_SERVER_TOKEN", "OMR_SERVER_CORS_ORIGINS"):
        env.pop(name, None)
    return env


@pytest.fixture
def serve_process(
    serve_env: dict[str, str], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    env = dict(serve_env, OMR_SERVER_PORT="0")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            DRIVER,
            str(tmp_path / "logs"),
            "serve",
            "--workers",
            "2",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = _wait_for_port(process)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def _wait_for_port(process: subprocess.Popen[str]) -> int:
    assert process.stderr is not None
    for line in process.stderr:
        match = LISTENING.search(line)
        if match:
            return int(match.group(1))
    raise AssertionError(f"serve exited with {process.wait(10)} before listening")


def test_serve_runs_task_and_stops_on_sigterm(
    serve_process: tuple[subprocess.Popen[str], int],
    sheet_ids: list[int],
    tmp_path: Path,
) -> None:
    process, port = serve_process

    events = asyncio.run(_reprocess_over_http(port, sheet_ids))
    process.send_signal(signal.SIGTERM)
    code = process.wait(TIMEOUT_S)

    assert events[-1] == "complete"
    assert code == 0
    log = (tmp_path / "logs" / "omr-desktop.log").read_text()
    assert f"Server listening on 127.0.0.1:{port}" in log
    assert "Server stopped" in log


async def _reprocess_over_http(port: int, sheet_ids: list[int]) -> list[str]:
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        health = await session.get("/health")
        assert health.status == 200
        response = await session.post(
            "/api/sheets/reprocess", json={"sheet_ids": sheet_ids, "profile_id": 2}
        )
        task_id = (await response.json())["task_id"]
        stream = await session.get(f"/api/sheets/reprocess/{task_id}/stream")
        read = await read_stream(stream)
    return [e.event for e in read.events]


@pytest.mark.parametrize(
    ("arguments", "variables", "message"),
    [
        (["--host", "0.0.0.0"], {}, "needs a token"),
        ([], {"OMR_SERVER_HOST": "0.0.0.0"}, "needs a token"),
        ([], {"OMR_SERVER_PORT": "eighty"}, "OMR_SERVER_PORT"),
        (["--port", "70000"], {}, "between 0 and 65535"),
        (["--workers", "0"], {}, "--workers"),
    ],
)
def test_serve_rejects_bad_settings(
    serve_env: dict[str, str],
    tmp_path: Path,
    arguments: list[str],
    variables: dict[str, str],
    message: str,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "logs"), "serve", *arguments],
        env=dict(serve_env, **variables),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert message in done.stderr


def test_sigterm_ends_streams_with_error_event(
    serve_process: tuple[subprocess.Popen[str], int],
    sheet_ids: list[int],
    db_conninfo: str,
) -> None:
    process, port = serve_process
    # 600 more sheets on the same images keep the first task running until
    # the signal comes. The second task waits behind it.
    with psycopg.connect(db_conninfo) as conn:
        copies = [
            int(r[0])
            for r in conn.execute(
                "INSERT INTO sheets (batch_id, sequence_no, image_path, status)"
                " SELECT batch_id, sequence_no + 1000 * copy, image_path, status"
                " FROM sheets, generate_series(1, 150) AS copy RETURNING id"
            )
        ]

    running, queued = asyncio.run(_stop_during_task(process, port, copies, sheet_ids))
    code = process.wait(TIMEOUT_S)

    assert running[-1].event == "error"
    assert "cancelled" in running[-1].data
    # The bar stays where the task stopped instead of falling back to 0.
    progress = [json.loads(e.data) for e in running if e.event == "progress"]
    reached = progress[-1]["overall_percentage"] if progress else 0.0
    assert json.loads(running[-1].data)["overall_percentage"] == reached
    assert queued[-1].event == "error"
    assert "cancelled" in queued[-1].data
    assert code == 0


async def _stop_during_task(
    process: subprocess.Popen[str], port: int, first: list[int], second: list[int]
) -> tuple[list[Event], list[Event]]:
    """Start two tasks, follow both streams, and send SIGTERM once the first runs."""
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
        streams = []
        for ids in (first, second):
            response = await session.post(
                "/api/sheets/reprocess", json={"sheet_ids": ids, "profile_id": 2}
            )
            assert response.status == 200, await response.text()
            task_id = (await response.json())["task_id"]
            stream = await session.get(f"/api/sheets/reprocess/{task_id}/stream")
            streams.append((task_id, asyncio.create_task(read_stream(stream))))
        status_url = f"/api/sheets/reprocess/{streams[0][0]}/status"
        while (await (await session.get(status_url)).json())["status"] != "STARTED":
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        reads = [await asyncio.wait_for(read, TIMEOUT_S) for _, read in streams]
    return reads[0].events, reads[1].events
