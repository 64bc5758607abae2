"""Detection on a QThreadPool through the Executor the pipeline uses."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path

import psycopg
import pytest
from pytestqt.qtbot import QtBot

from omr_desktop.config import DatabaseChoice
from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.gui.workers.qt_executor import QThreadPoolExecutor
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.pipeline.events import ListSink
from omr_desktop.pipeline.reprocess import (
    LocalDetection,
    ReprocessRequest,
    run_reprocess,
)

pytestmark = pytest.mark.gui


def test_executor_returns_results_from_pool_threads() -> None:
    executor = QThreadPoolExecutor(2)
    main = threading.get_ident()

    futures = [
        executor.submit(lambda n=n: (n * n, threading.get_ident())) for n in range(20)
    ]

    results = [f.result(timeout=10) for f in futures]
    executor.shutdown()
    assert [r[0] for r in results] == [n * n for n in range(20)]
    assert all(thread != main for _, thread in results)


def test_executor_passes_exceptions_to_future() -> None:
    executor = QThreadPoolExecutor(1)

    def fail() -> None:
        raise ValueError("bad image")

    future: Future[None] = executor.submit(fail)

    with pytest.raises(ValueError, match="bad image"):
        future.result(timeout=10)
    executor.shutdown()


def test_executor_cancels_queued_jobs_on_shutdown() -> None:
    executor = QThreadPoolExecutor(1)
    started = threading.Event()
    gate = threading.Event()

    def block() -> str:
        started.set()
        gate.wait(10)
        return "ran"

    first = executor.submit(block)
    queued = [executor.submit(lambda: 1) for _ in range(5)]
    assert started.wait(10)

    executor.shutdown(wait=False, cancel_futures=True)
    gate.set()
    executor.shutdown(wait=True)

    assert first.result(timeout=10) == "ran"
    assert all(f.cancelled() for f in queued)


@pytest.mark.db
def test_reprocess_runs_on_qthreadpool(
    db_conninfo: str, tmp_path: Path, qtbot: QtBot
) -> None:
    with psycopg.connect(db_conninfo) as conn:
        seed_demo(conn, tmp_path, sheets=4, workers=2)
        ids = tuple(r[0] for r in conn.execute("SELECT id FROM sheets ORDER BY id"))
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    executor = QThreadPoolExecutor(2)
    sink = ListSink()
    task_id = "00000000-0000-4000-8000-000000000001"
    with database.connect(autocommit=True) as conn:
        task_store.create_task(conn, task_id, 2, list(ids), {})
    try:
        result = run_reprocess(
            database,
            task_id,
            ReprocessRequest(ids, 2),
            LocalDetection(executor, 2),
            sink,
        )
    finally:
        executor.shutdown()
        database.close()

    assert result["sheets_processed"] == 4
    assert result["answers_changed"] > 0
    assert sink.events[-1].event == "complete"
