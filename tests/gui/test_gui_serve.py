"""The GUI with --serve: one process runs the window and the HTTP interface."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from omr_desktop.pipeline.demo import seed_demo

pytestmark = [pytest.mark.gui, pytest.mark.db, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def request(url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    with urllib.request.urlopen(
        urllib.request.Request(url, data=data, headers=headers), timeout=10
    ) as response:
        return json.loads(response.read())


def wait_for_health(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "the GUI exited early"
        try:
            if request(f"{base}/health")["status"] == "ok":
                return
        except OSError:
            time.sleep(0.3)
    pytest.fail("the GUI's HTTP server did not answer within 60 s")


def test_task_posted_to_gui_server_succeeds(db_conninfo: str, tmp_path: Path) -> None:
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path / "data", sheets=2, workers=2)
        ids = [r[0] for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
    port = free_port()
    env = dict(
        os.environ,
        OMR_DATABASE_URL=db_conninfo,
        QT_QPA_PLATFORM="offscreen",
        OMR_DATA_DIR=str(tmp_path / "app"),
        HOME=str(tmp_path),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "omr_desktop.cli", "--serve", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/api"
    try:
        wait_for_health(base, process)
        posted = request(
            f"{base}/sheets/reprocess", {"sheet_ids": ids, "profile_id": 2}
        )
        task_id = posted["task_id"]
        deadline = time.monotonic() + 120
        status = {}
        while time.monotonic() < deadline:
            status = request(f"{base}/sheets/reprocess/{task_id}/status")
            if status["status"] in ("SUCCESS", "FAILURE"):
                break
            time.sleep(0.3)
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=60)

    assert posted["status"] == "success"
    assert status["status"] == "SUCCESS"
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
