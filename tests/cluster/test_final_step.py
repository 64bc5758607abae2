"""The cluster's chunks and final step against other deliveries and workers.

On the cluster, another process may mark a task FAILURE while the final
step is writing: a chunk that finds the cancel flag set, or a late duplicate
delivery of a chunk. These tests run ``run_reprocess`` in this process with
precomputed readings and end the task from a second connection, as such a
worker would, so they need no worker processes.

A chunk is delivered again whenever it runs longer than the visibility
timeout, so copies of it can still be queued after one of them finished.
The chunk test runs such a late copy in this process.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from omr_desktop.cluster import tasks
from omr_desktop.cluster.chunk_codec import MAGIC, pack_readings
from omr_desktop.cluster.redis_events import RedisEvents
from omr_desktop.config import DatabaseChoice
from omr_desktop.db import task_store
from omr_desktop.db.database import Database
from omr_desktop.engine import SheetReading
from omr_desktop.pipeline import events as ev
from omr_desktop.pipeline.demo import seed_demo
from omr_desktop.pipeline.events import ListSink
from omr_desktop.pipeline.reprocess import (
    PrecomputedDetections,
    ReprocessError,
    ReprocessRequest,
    SheetJob,
    detect_reading,
    load_jobs,
    load_profile_settings,
    run_reprocess,
)
from tests.cluster.conftest import result_rows

pytestmark = [pytest.mark.db]

SENSITIVE = 2


class EndedDuringWrite(PrecomputedDetections):
    """Readings whose first use runs ``end_task``, as another worker would."""

    def __init__(
        self,
        readings: dict[int, SheetReading | str],
        end_task: Callable[[], None],
    ) -> None:
        super().__init__(readings)
        self._end_task = end_task

    def outcomes(self, jobs: list[SheetJob], *args: object) -> Iterator[object]:  # type: ignore[override]
        self._end_task()
        yield from super().outcomes(jobs, *args)  # type: ignore[arg-type]


@pytest.fixture
def seeded(db_conninfo: str, tmp_path: Path) -> Iterator[tuple[Database, list[int]]]:
    with psycopg.connect(db_conninfo, autocommit=True) as conn:
        seed_demo(conn, tmp_path / "images", sheets=3, workers=1)
        ids = [int(r[0]) for r in conn.execute("SELECT id FROM sheets ORDER BY id")]
    database = Database(DatabaseChoice(db_conninfo, "environment"))
    database.open()
    try:
        yield database, ids
    finally:
        database.close()


def started_task(database: Database, request: ReprocessRequest) -> str:
    task_id = str(uuid.uuid4())
    with database.connect(autocommit=True) as conn:
        task_store.create_task(
            conn,
            task_id,
            request.profile_id,
            list(request.sheet_ids),
            request.options(),
            (task_store.CLUSTER_RUNNER, None),
        )
        task_store.mark_started(conn, task_id)
    return task_id


def detect_all(
    database: Database, request: ReprocessRequest
) -> dict[int, SheetReading | str]:
    with database.connect() as conn:
        settings = load_profile_settings(conn, request.profile_id)
        jobs = load_jobs(conn, request, settings)
    return {job.sheet.id: detect_reading(job, settings, False) for job in jobs}


def test_task_failed_during_write_stays_failed(
    seeded: tuple[Database, list[int]], db_conninfo: str
) -> None:
    database, sheet_ids = seeded
    request = ReprocessRequest(tuple(sheet_ids), SENSITIVE)
    readings = detect_all(database, request)
    task_id = started_task(database, request)
    before = result_rows(db_conninfo)

    def fail_elsewhere() -> None:
        with database.connect(autocommit=True) as conn:
            assert task_store.fail_if_unfinished(conn, task_id, "cancelled", {})

    with pytest.raises(ReprocessError, match="cancelled"):
        run_reprocess(
            database,
            task_id,
            request,
            EndedDuringWrite(readings, fail_elsewhere),
            ListSink(),
        )

    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
    assert row is not None
    assert row.status == task_store.FAILURE
    assert row.error == "cancelled"
    assert result_rows(db_conninfo) == before


@pytest.fixture
def worker_env(db_conninfo: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point this process's cluster task code at the test's database."""
    monkeypatch.setenv("OMR_DATABASE_URL", db_conninfo)
    monkeypatch.setattr(tasks, "_database", None)
    monkeypatch.setattr(tasks, "_events", {})
    yield
    if tasks._database is not None:
        tasks._database.close()
    for events in tasks._events.values():
        events.close()


def test_late_chunk_copy_keeps_task_running(
    seeded: tuple[Database, list[int]],
    worker_env: None,
    celery_app: Any,
    redis_events: RedisEvents,
) -> None:
    database, sheet_ids = seeded
    request = ReprocessRequest(tuple(sheet_ids), SENSITIVE)
    task_id = started_task(database, request)
    # One delivery stored the result; the copies queued meanwhile used up
    # the delivery limit.
    redis_events.store_chunk(task_id, 0, pack_readings(detect_all(database, request)))
    attempts = f"omr:task:{task_id}:attempts:0"
    redis_events.client.set(attempts, tasks.MAX_CHUNK_DELIVERIES)

    chunk_task = celery_app.tasks[tasks.CHUNK_TASK_NAME]
    outcome = chunk_task.apply(
        args=[task_id, 0, sheet_ids, SENSITIVE, False, len(sheet_ids)]
    )

    assert outcome.successful(), outcome.traceback
    assert outcome.result["sheets"] == len(sheet_ids)
    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
    assert row is not None
    assert row.status == task_store.STARTED
    published = [e["event"] for e in redis_events.history(task_id)]
    assert ev.ERROR not in published


def test_late_copy_of_other_format_fails_task(
    seeded: tuple[Database, list[int]],
    worker_env: None,
    celery_app: Any,
    redis_events: RedisEvents,
) -> None:
    database, sheet_ids = seeded
    request = ReprocessRequest(tuple(sheet_ids), SENSITIVE)
    task_id = started_task(database, request)
    # A worker of the version before stored the chunk in format 1.
    packed = pack_readings(detect_all(database, request))
    redis_events.store_chunk(task_id, 0, b"OMRC1" + packed[len(MAGIC) :])

    chunk_task = celery_app.tasks[tasks.CHUNK_TASK_NAME]
    outcome = chunk_task.apply(
        args=[task_id, 0, sheet_ids, SENSITIVE, False, len(sheet_ids)]
    )

    assert outcome.failed()
    assert isinstance(outcome.result, tasks.ClusterTaskError)
    assert "stored result of chunk 0 is unreadable" in str(outcome.result)
    assert "in format 1, from another version" in str(outcome.result)
    with database.connect() as conn:
        row = task_store.get_task(conn, task_id)
    assert row is not None
    assert row.status == task_store.FAILURE
    published = [e["event"] for e in redis_events.history(task_id)]
    assert ev.ERROR in published


def test_unknown_profile_fails_with_event(
    seeded: tuple[Database, list[int]],
    worker_env: None,
    celery_app: Any,
    redis_events: RedisEvents,
) -> None:
    database, sheet_ids = seeded
    task_id = str(uuid.uuid4())

    coordinator = celery_app.tasks[tasks.TASK_NAME]
    outcome = coordinator.apply(args=[task_id, sheet_ids, 99], task_id=task_id)

    assert outcome.failed()
    assert isinstance(outcome.result, tasks.ClusterTaskError)
    assert "Profile 99 does not exist" in str(outcome.result)
    published = redis_events.history(task_id)
    assert [e["event"] for e in published] == [ev.ERROR]
    assert "Profile 99 does not exist" in published[0]["result"]["reason"]
    with database.connect() as conn:
        assert task_store.get_task(conn, task_id) is None
