"""The TaskManager on the cluster engine: the same queue, events from Redis."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from omr_desktop.cluster.engine import ClusterEngine
from omr_desktop.cluster.settings import ClusterSettings
from omr_desktop.config import DatabaseChoice
from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.events import ProgressEvent
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import TaskManager
from tests.cluster.conftest import TASK_TIMEOUT_S, Worker, free_port, result_rows

pytestmark = [pytest.mark.db, pytest.mark.slow]


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[ProgressEvent] = []

    def __call__(self, event: ProgressEvent) -> None:
        with self.lock:
            self.events.append(event)


@pytest.fixture
def cluster_database(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
) -> Iterator[tuple[Database, str, list[int]]]:
    _local, dsn, ids = seeded_pair(4)
    database = Database(DatabaseChoice(dsn, "environment"))
    database.open()
    try:
        yield database, dsn, ids
    finally:
        database.close()


def test_manager_runs_task_on_cluster(
    cluster_database: tuple[Database, str, list[int]],
    cluster_settings: ClusterSettings,
    start_worker: Callable[..., Worker],
    redis_events: Any,
) -> None:
    database, dsn, ids = cluster_database
    start_worker(dsn)
    engine = ClusterEngine(cluster_settings, database)
    manager = TaskManager(database, engine=engine)
    recorder = Recorder()
    manager.add_listener(recorder)
    try:
        task_id = manager.submit(ReprocessRequest(tuple(ids), 2))
        assert manager.wait(task_id, TASK_TIMEOUT_S)
    finally:
        manager.shutdown()
        engine.close()

    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
        stored = task_store.events_after(conn, task_id)
    assert row is not None
    assert row.status == task_store.SUCCESS, row.error
    assert row.on_cluster
    assert row.result["sheets_processed"] == len(ids)
    relayed = [e.to_dict() for e in recorder.events]
    published = redis_events.history(task_id)
    # The listeners and the task's stored log get the workers' events,
    # with the same ids, in the same order.
    assert relayed == published
    assert [s.data for s in stored] == published
    assert relayed[-1]["event"] == ev.COMPLETE
    # Four sheets make one chunk of the default 64 sheets.
    messages = [e["message"] for e in relayed]
    assert f"Dispatching {len(ids)} sheets in 1 chunk to the workers (detecting)" in (
        messages
    )


def test_unreachable_broker_fails_task_cleanly(
    cluster_database: tuple[Database, str, list[int]],
) -> None:
    database, dsn, ids = cluster_database
    before = result_rows(dsn)
    # A loopback port with no listener.
    settings = ClusterSettings(f"redis://127.0.0.1:{free_port()}/0", 5.0, 1.0)
    engine = ClusterEngine(settings, database)
    manager = TaskManager(database, engine=engine)
    recorder = Recorder()
    manager.add_listener(recorder)
    try:
        task_id = manager.submit(ReprocessRequest(tuple(ids), 2))
        assert manager.wait(task_id, TASK_TIMEOUT_S)
    finally:
        manager.shutdown()
        engine.close()

    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
    assert row is not None
    assert row.status == task_store.FAILURE
    assert row.error is not None
    assert "is unreachable" in row.error
    assert "switch the engine to local threads" in row.error
    assert "Connection refused. The task was not sent" in row.error
    assert ".." not in row.error
    assert recorder.events[-1].event == ev.ERROR
    assert result_rows(dsn) == before


def test_relative_image_path_is_rejected(
    cluster_database: tuple[Database, str, list[int]],
    cluster_settings: ClusterSettings,
) -> None:
    database, dsn, ids = cluster_database
    with database.connect() as conn:
        conn.execute(
            "UPDATE sheets SET image_path = 'scans/1.png' WHERE id = %s", (ids[0],)
        )
        conn.commit()
    engine = ClusterEngine(cluster_settings, database)
    manager = TaskManager(database, engine=engine)
    try:
        task_id = manager.submit(ReprocessRequest(tuple(ids), 2))
        assert manager.wait(task_id, TASK_TIMEOUT_S)
    finally:
        manager.shutdown()
        engine.close()

    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
    assert row is not None
    assert row.status == task_store.FAILURE
    assert row.error is not None
    assert f"{ids[0]} (scans/1.png)" in row.error
    assert "relative image paths" in row.error


def test_task_without_worker_fails_after_progress_timeout(
    cluster_database: tuple[Database, str, list[int]],
    cluster_settings: ClusterSettings,
    start_worker: Callable[..., Worker],
    celery_app: Any,
    redis_events: Any,
) -> None:
    database, dsn, ids = cluster_database
    before = result_rows(dsn)
    settings = dataclasses.replace(cluster_settings, progress_timeout_s=3.0)
    engine = ClusterEngine(settings, database)
    manager = TaskManager(database, engine=engine)
    recorder = Recorder()
    manager.add_listener(recorder)
    try:
        task_id = manager.submit(ReprocessRequest(tuple(ids), 2))
        assert manager.wait(task_id, TASK_TIMEOUT_S)
    finally:
        manager.shutdown()
        engine.close()

    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
        stored = task_store.events_after(conn, task_id)
    assert row is not None
    assert row.status == task_store.FAILURE
    assert row.error is not None
    assert row.error.startswith("No cluster worker reported progress for 3 s")
    assert "check that a worker is running" in row.error
    assert recorder.events[-1].event == ev.ERROR
    assert recorder.events[-1].result == {"reason": row.error}
    published = redis_events.history(task_id)
    assert published[-1]["event"] == ev.ERROR
    assert [s.data for s in stored] == published
    assert result_rows(dsn) == before

    # A worker that takes the queued message later finds the task ended.
    start_worker(dsn)
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while celery_app.AsyncResult(task_id).state != "FAILURE":
        assert time.monotonic() < deadline, "the Celery result never failed"
        time.sleep(0.1)
    with database.connect() as conn:
        after = task_store.get_task(conn, task_id)
    assert after is not None
    assert after.status == task_store.FAILURE
    assert after.error == row.error
    assert result_rows(dsn) == before
