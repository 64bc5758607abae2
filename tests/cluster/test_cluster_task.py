"""The cluster task on a real Redis with real worker processes.

The same demo sheets are reprocessed by the local engine in one database
and by ``reprocess_omr_sheet_task`` over several chunks in a clone of it;
both databases must end with the same rows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from omr_desktop.cluster.redis_events import RedisEvents
from omr_desktop.cluster.tasks import TASK_NAME
from omr_desktop.config import DatabaseChoice
from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.reprocess import ReprocessRequest
from omr_desktop.pipeline.task_manager import TaskManager
from tests.cluster.conftest import TASK_TIMEOUT_S, Worker, result_rows

pytestmark = [pytest.mark.db, pytest.mark.slow]

SENSITIVE = 2

# Results that depend on the run, not on the work.
TIMING_KEYS = {"duration_s", "database_s", "stage_s"}


def run_local(dsn: str, sheet_ids: list[int]) -> dict[str, Any]:
    """Reprocess with the local engine; return the task's result."""
    database = Database(DatabaseChoice(dsn, "environment"))
    database.open()
    pool = ThreadPoolExecutor(2)
    manager = TaskManager(database, pool, 2)
    try:
        task_id = manager.submit(ReprocessRequest(tuple(sheet_ids), SENSITIVE))
        assert manager.wait(task_id, TASK_TIMEOUT_S)
        with database.connect() as conn:
            row = task_store.get_task(conn, task_id)
    finally:
        manager.shutdown()
        pool.shutdown()
        database.close()
    assert row is not None
    assert row.status == task_store.SUCCESS, row.error
    return row.result


def send(app: Any, sheet_ids: list[int], chunk_sheets: int) -> str:
    task_id = str(uuid.uuid4())
    app.send_task(
        TASK_NAME,
        args=[task_id, sheet_ids, SENSITIVE],
        kwargs={"chunk_sheets": chunk_sheets},
        task_id=task_id,
    )
    return task_id


def wait_for_row(dsn: str, task_id: str, timeout_s: float) -> task_store.TaskRow:
    """Wait until the task's row is SUCCESS or FAILURE and return it."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = task_store.get_task(conn, task_id)
            if row is not None and row.status in (
                task_store.SUCCESS,
                task_store.FAILURE,
            ):
                return row
            time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not end in {timeout_s} s")


def without_timings(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


def test_cluster_matches_local_engine(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    start_worker: Callable[..., Worker],
    celery_app: Any,
    redis_events: RedisEvents,
) -> None:
    local_dsn, cluster_dsn, sheet_ids = seeded_pair(6)
    before = result_rows(cluster_dsn)
    local_result = run_local(local_dsn, sheet_ids)
    start_worker(cluster_dsn)

    task_id = send(celery_app, sheet_ids, chunk_sheets=2)
    celery_result = celery_app.AsyncResult(task_id).get(timeout=TASK_TIMEOUT_S)
    row = wait_for_row(cluster_dsn, task_id, TASK_TIMEOUT_S)

    assert row.status == task_store.SUCCESS, row.error
    assert row.on_cluster
    assert celery_app.AsyncResult(task_id).state == "SUCCESS"
    assert without_timings(celery_result) == without_timings(local_result)
    assert without_timings(row.result) == without_timings(local_result)
    assert local_result["answers_changed"] > 0
    cluster_rows = result_rows(cluster_dsn)
    assert cluster_rows != before
    assert cluster_rows == result_rows(local_dsn)


def test_cluster_events_in_order(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    start_worker: Callable[..., Worker],
    celery_app: Any,
    redis_events: RedisEvents,
) -> None:
    _local_dsn, cluster_dsn, sheet_ids = seeded_pair(6)
    start_worker(cluster_dsn)

    task_id = send(celery_app, sheet_ids, chunk_sheets=2)
    celery_app.AsyncResult(task_id).get(timeout=TASK_TIMEOUT_S)
    events = redis_events.history(task_id)

    assert [e["event_id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["event"] for e in events[:-1]] == [ev.PROGRESS] * (len(events) - 1)
    assert events[-1]["event"] == ev.COMPLETE
    assert events[-1]["result"]["sheets_processed"] == len(sheet_ids)
    stages = [e["stage"] for e in events]
    order = [ev.STAGES.index(s) for s in stages]
    assert order == sorted(order), stages
    assert set(stages) == set(ev.STAGES)
    processed = [e["processed"] for e in events]
    assert processed == sorted(processed)
    assert max(processed) == len(sheet_ids)
    overall = [e["overall_percentage"] for e in events]
    assert overall == sorted(overall)
    elapsed = [e["elapsed_s"] for e in events]
    assert elapsed == sorted(elapsed)
    assert all(e["task_id"] == task_id for e in events)


def test_cluster_unknown_sheet_fails_cleanly(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    start_worker: Callable[..., Worker],
    celery_app: Any,
    redis_events: RedisEvents,
) -> None:
    _local_dsn, cluster_dsn, sheet_ids = seeded_pair(2)
    before = result_rows(cluster_dsn)
    start_worker(cluster_dsn)

    task_id = send(celery_app, [*sheet_ids, 999_999], chunk_sheets=1)
    row = wait_for_row(cluster_dsn, task_id, TASK_TIMEOUT_S)

    assert row.status == task_store.FAILURE
    assert row.error == "Unknown sheet ids: 999999."
    assert result_rows(cluster_dsn) == before
    events = redis_events.history(task_id)
    assert events[-1]["event"] == ev.ERROR
    assert events[-1]["result"]["reason"] == "Unknown sheet ids: 999999."
    deadline = time.monotonic() + 10
    while celery_app.AsyncResult(task_id).state != "FAILURE":
        assert time.monotonic() < deadline, "the Celery result never failed"
        time.sleep(0.1)


def test_killed_worker_chunk_is_delivered_again(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    start_worker: Callable[..., Worker],
    celery_app: Any,
    redis_events: RedisEvents,
    redis_url: str,
) -> None:
    local_dsn, cluster_dsn, sheet_ids = seeded_pair(12)
    before = result_rows(cluster_dsn)
    local_result = run_local(local_dsn, sheet_ids)
    doomed = start_worker(cluster_dsn, concurrency=1)

    task_id = send(celery_app, sheet_ids, chunk_sheets=2)
    deadline = time.monotonic() + TASK_TIMEOUT_S
    while not any(e["processed"] for e in redis_events.history(task_id)):
        assert time.monotonic() < deadline, "no sheet was ever detected"
        time.sleep(0.01)
    doomed.kill()

    # The dead worker held a chunk it never acknowledged, and nothing was
    # written: the final step runs only after every chunk.
    unacked = redis_events.client.hlen("unacked")
    assert unacked >= 1
    assert result_rows(cluster_dsn) == before
    with psycopg.connect(cluster_dsn) as conn:
        running = task_store.get_task(conn, task_id)
    assert running is not None
    assert running.status == task_store.STARTED

    start_worker(cluster_dsn)
    row = wait_for_row(cluster_dsn, task_id, TASK_TIMEOUT_S)

    assert row.status == task_store.SUCCESS, row.error
    assert without_timings(row.result) == without_timings(local_result)
    assert result_rows(cluster_dsn) == result_rows(local_dsn)
    events = redis_events.history(task_id)
    assert [e["event_id"] for e in events] == list(range(1, len(events) + 1))
    processed = [e["processed"] for e in events]
    assert processed == sorted(processed)
    assert max(processed) == len(sheet_ids)
    assert events[-1]["event"] == ev.COMPLETE


def test_chunk_that_keeps_killing_workers_fails_task(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    start_worker: Callable[..., Worker],
    celery_app: Any,
    redis_events: RedisEvents,
) -> None:
    from omr_desktop.cluster.tasks import MAX_CHUNK_DELIVERIES

    _local_dsn, cluster_dsn, sheet_ids = seeded_pair(2)
    before = result_rows(cluster_dsn)
    task_id = send(celery_app, sheet_ids, chunk_sheets=1)
    # As if a worker had died on chunk 0 on every delivery so far.
    name = f"omr:task:{task_id}:attempts:0"
    redis_events.client.set(name, MAX_CHUNK_DELIVERIES)
    start_worker(cluster_dsn)

    row = wait_for_row(cluster_dsn, task_id, TASK_TIMEOUT_S)

    assert row.status == task_store.FAILURE
    assert row.error is not None
    assert "never finished" in row.error
    # A live worker whose chunk outran the visibility timeout is one cause.
    assert "ran longer than the visibility timeout" in row.error
    assert "or its workers stopped" in row.error
    assert "Raise OMR_CLUSTER_VISIBILITY_TIMEOUT" in row.error
    assert result_rows(cluster_dsn) == before
    events = redis_events.history(task_id)
    assert events[-1]["event"] == ev.ERROR
    assert [e["event"] for e in events].count(ev.ERROR) == 1
    deadline = time.monotonic() + 20
    while celery_app.AsyncResult(task_id).state != "FAILURE":
        assert time.monotonic() < deadline, "the Celery result never failed"
        time.sleep(0.1)


def test_relative_image_path_fails_its_sheet(
    seeded_pair: Callable[[int], tuple[str, str, list[int]]],
    start_worker: Callable[..., Worker],
    celery_app: Any,
) -> None:
    _local_dsn, cluster_dsn, sheet_ids = seeded_pair(2)
    relative, absolute = sheet_ids
    with psycopg.connect(cluster_dsn, autocommit=True) as conn:
        conn.execute(
            "UPDATE sheets SET image_path = 'scans/1.png' WHERE id = %s", (relative,)
        )
    start_worker(cluster_dsn)

    # Sent straight to the broker, as the web deployment does, so no
    # ClusterEngine checks the paths first.
    task_id = send(celery_app, sheet_ids, chunk_sheets=1)
    row = wait_for_row(cluster_dsn, task_id, TASK_TIMEOUT_S)

    assert row.status == task_store.SUCCESS, row.error
    assert row.result["sheets_processed"] == 1
    assert row.result["sheets_failed"] == 1
    failed = row.result["failed_sheets"]
    assert [f["sheet_id"] for f in failed] == [relative]
    assert "'scans/1.png' is relative" in failed[0]["error"]
    assert (
        "needs absolute image paths that every worker can read" in (failed[0]["error"])
    )
    assert absolute not in [f["sheet_id"] for f in failed]
