"""``omr-desktop serve`` in its own process: start, serve a task, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.server.conftest import TIMEOUT_S, read_stream

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
